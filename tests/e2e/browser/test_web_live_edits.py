"""The page edits a live fake-camera stream without pausing (issue 25): a new object drawn as a box, a
correction painted on the live view and a removed object go into the stream while frames keep coming,
each answered in order; then "Save session" downloads the tracker state and "Open session" continues it
as a new session on the camera."""

from __future__ import annotations

import pytest

from .conftest import page_errors, write_y4m  # noqa: F401 - page_errors: used through open_page
from .test_web_page import drag, open_page, paint, serve_tiny, still_then_moving, wait  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def answered(page) -> int:  # noqa: ANN001
    return page.evaluate("() => window.lwl.counts.answered")


def phase(page) -> str:  # noqa: ANN001
    return page.evaluate("() => window.lwl.phase")


def test_live_camera_edits_without_pausing_then_save_and_open(serve_tiny, browser, tmp_path) -> None:  # noqa: ANN001, F811
    clip = still_then_moving(100, 100, 120, 160)
    camera = write_y4m(tmp_path / "camera.y4m", clip, fps=25)
    x, y, w, h = clip[0][1]
    page, errors = open_page(browser, serve_tiny.url + f"/?source=camera&box={x},{y},{w},{h}&start=1&record=1",
                             camera)
    wait(page, "window.lwl.counts.answered >= 3", 120)

    page.keyboard.press("n")  # object 2, a box drawn on the live view
    page.keyboard.press("b")
    drag(page, (112, 8, 30, 24))
    assert phase(page) == "streaming"
    page.keyboard.press("c")
    wait(page, "'2' in window.lwl.objects", 60)
    n = answered(page)
    wait(page, f"window.lwl.counts.answered >= {n + 3}", 60)  # frames kept coming: never paused
    assert phase(page) == "streaming"
    assert {o["id"] for o in page.evaluate("() => window.lwl.results.at(-1).objects")} == {1, 2}

    page.keyboard.press("1")  # a correction painted on the live view
    page.keyboard.press("p")
    paint(page, [(8, 8), (24, 10), (22, 24), (10, 22)])
    page.keyboard.press("c")
    wait(page, "window.lwl.results.some((r) => r.type === 'corrected')", 60)
    page.click("#objects li[data-id='2'] button")  # remove object 2, still streaming
    wait(page, "window.lwl.results.some((r) => r.type === 'removed') && !('2' in window.lwl.objects)", 60)
    n = answered(page)
    wait(page, f"window.lwl.counts.answered >= {n + 2}", 60)
    assert phase(page) == "streaming"
    types = [r["type"] for r in page.evaluate("() => window.lwl.results")]
    assert types.index("added") < types.index("corrected") < types.index("removed")
    assert "paused" not in page.evaluate("() => document.body.dataset.phase")

    with page.expect_download() as download:  # save, stop, open: the saved session streams on
        page.click("#btn-save")
    saved = tmp_path / "saved.lwlstate"
    download.value.save_as(saved)
    assert saved.read_bytes()[:8] == b"LWLSTATE"
    old = page.evaluate("() => window.lwl.sessionId")
    page.keyboard.press("Escape")
    wait(page, "window.lwl.sessionId === null && window.lwl.phase === 'preview'", 30)
    page.set_input_files("#open-state", str(saved))
    wait(page, "window.lwl.sessionId !== null && window.lwl.phase === 'streaming'", 60)
    assert page.evaluate("() => window.lwl.sessionId") != old
    assert sorted(map(int, page.evaluate("() => Object.keys(window.lwl.objects)"))) == [1]
    n = answered(page)
    wait(page, f"window.lwl.counts.answered >= {n + 2}", 60)
    assert errors == []
