"""The web page in a real Chromium against a real `lwl serve` (and api + worker + Redis for the worker test).

What a person does, with mouse and keyboard: a box drawn on the fake camera starts a session and the
masks follow the moving object (bundled model); every frame of a video file comes back in order with
masks equal to `lwl segment` on the same frames; a correction and an added object change what comes
back; a whole-video job goes from upload to download; a wrong file and a stopped worker are explained.
Screenshots go to $LWL_SCREENSHOT_DIR when it is set (`make screenshots` writes docs/img/).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import time
import zipfile
from pathlib import Path
from urllib.parse import quote

import av
import httpx
import numpy as np
import pytest
from conftest import lwl_segment
from PIL import Image

from .conftest import page_errors, write_video, write_y4m

pytestmark = pytest.mark.slow

SQUARE_RGB = (230, 30, 200)


def still_then_moving(n_still: int, n_move: int, h: int = 240, w: int = 320) -> list[tuple[np.ndarray, tuple]]:
    """A magenta square on a smooth textured background: still for `n_still` frames (so a camera page that
    starts at any moment in that stretch sees it in one place), then out to the right and back."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.stack([120 + 30 * np.sin(0.03 * xx + c) * np.cos(0.04 * yy - c) for c in range(3)], -1)
    bg = np.clip(bg, 0, 255).astype(np.uint8)
    side, x0 = h // 4, 3 * w // 16
    x1, y = w - side - x0, (h - side) // 2
    out = []
    for i in range(n_still + n_move):
        t = max(0, i - n_still) / max(1, n_move)
        x = int(round(x0 + (x1 - x0) * (1 - abs(1 - 2 * t))))  # x0 -> x1 -> x0 (60 -> 200 -> 60 at 320x240)
        img = bg.copy()
        img[y : y + side, x : x + side] = SQUARE_RGB
        out.append((img, (x, y, side, side)))
    return out


def write_images(folder: Path, clip: list[tuple[np.ndarray, tuple]]) -> list[str]:
    """The clip as PNG files 00000.png, 00001.png, ... (the page's Images source)."""
    files = []
    for i, (img, _) in enumerate(clip):
        p = folder / f"{i:05d}.png"
        Image.fromarray(img).save(p)
        files.append(str(p))
    return files


def square_mask(rgb: np.ndarray) -> np.ndarray:
    """Where the magenta square is in a (decoded, re-encoded) frame: the known position."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > 170) & (g < 110) & (b > 140)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def b64png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def shot(page, name: str) -> None:  # noqa: ANN001 - playwright Page
    """Screenshots for docs/WEB.md when LWL_SCREENSHOT_DIR is set."""
    d = os.environ.get("LWL_SCREENSHOT_DIR")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(d) / f"{name}.png"))


def wait(page, js: str, timeout_s: float = 120) -> None:  # noqa: ANN001
    """Wait for a JS condition (a function expression: the page's CSP forbids eval of strings); on time-out
    the failure says what the page showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(f"() => {js}", timeout=timeout_s * 1000, polling=100)
    except PlaywrightTimeout:
        state = page.evaluate("() => ({phase: window.lwl && window.lwl.phase, counts: window.lwl && window.lwl.counts,"
                              " results: window.lwl && window.lwl.results.length, status: "
                              "document.getElementById('status').textContent.replace(/\\s+/g, ' '), message: "
                              "document.getElementById('message').hidden ? '' : "
                              "document.getElementById('message-text').textContent})")
        raise AssertionError(f"waited {timeout_s} s for {js}; the page: {state}") from None


def drag(page, box: tuple[float, float, float, float]) -> None:  # noqa: ANN001
    """Drag a box given in frame pixels over the (CSS-scaled) canvas with the mouse."""
    r = page.locator("#view").bounding_box()
    fh, fw = page.evaluate("() => window.lwl.frameSize")
    sx, sy = r["width"] / fw, r["height"] / fh
    x, y, w, h = box
    page.mouse.move(r["x"] + x * sx, r["y"] + y * sy)
    page.mouse.down()
    page.mouse.move(r["x"] + (x + w / 2) * sx, r["y"] + (y + h / 2) * sy, steps=3)
    page.mouse.move(r["x"] + (x + w) * sx, r["y"] + (y + h) * sy, steps=3)
    page.mouse.up()


def paint(page, points: list[tuple[float, float]]) -> None:  # noqa: ANN001
    """A brush stroke through frame-pixel points."""
    r = page.locator("#view").bounding_box()
    fh, fw = page.evaluate("() => window.lwl.frameSize")
    sx, sy = r["width"] / fw, r["height"] / fh
    page.mouse.move(r["x"] + points[0][0] * sx, r["y"] + points[0][1] * sy)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(r["x"] + x * sx, r["y"] + y * sy, steps=4)
    page.mouse.up()


def message(page) -> str:  # noqa: ANN001
    return page.evaluate("() => document.getElementById('message').hidden ? '' : "
                         "document.getElementById('message-text').textContent")


@pytest.fixture
def serve_tiny(cluster_factory):  # noqa: ANN001, ANN201
    """`lwl serve` with the tiny test model (fast, deterministic, has a box encoder)."""
    c = cluster_factory(False)
    c.start("serve")
    c.wait_ready(workers=1)
    return c


def open_images(browser, url: str, files: list[str]):  # noqa: ANN001, ANN201
    """The page with image files as its source, showing the first one, ready to draw on."""
    page, errors = open_page(browser, url)
    page.set_input_files("#src-images", files)
    wait(page, "window.lwl.phase === 'preview'", 30)
    return page, errors


def open_page(browser, url: str, camera: Path | None = None, width: int = 1280, height: int = 800):  # noqa: ANN001, ANN201
    b = browser(camera)
    page = b.new_page(viewport={"width": width, "height": height})
    errors = page_errors(page)
    page.goto(url)
    wait(page, "document.body.dataset.ready === '1'", 30)
    return page, errors


# ---------------------------------------------------------------- page, headers, service info


def test_page_is_served_with_a_csp_and_reads_the_service(serve_tiny, browser) -> None:  # noqa: ANN001
    r = httpx.get(serve_tiny.url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp and "frame-ancestors" in csp
    assert httpx.get(serve_tiny.url + "/web/js/main.js").headers["content-security-policy"] == csp
    info = httpx.get(serve_tiny.url + "/v1/info").json()
    assert info["models"][0]["box_init"] is True and len(info["palette"]) == 256
    assert httpx.get(serve_tiny.url + "/openapi.json").json()["paths"]["/v1/info"]

    page, errors = open_page(browser, serve_tiny.url + "/")
    assert "box or mask start" in page.text_content("#model-info")
    assert page.is_enabled("#tool-box")
    assert errors == []


# ---------------------------------------------------------------- camera (bundled model)


@pytest.mark.parametrize("how", ["url", "mouse", "mask-url"])
def test_camera_box_starts_a_session_and_masks_follow_the_object(cluster_factory, browser, tmp_path, how) -> None:  # noqa: ANN001
    c = cluster_factory(False, LWL_WEIGHTS="", LWL_CROP_SIZE="")  # the bundled model, its own crop
    c.start("serve")
    c.wait_ready(workers=1)
    clip = still_then_moving(100, 100)  # 4 s still, 4 s out and back, at 25 fps; the camera loops it
    camera = write_y4m(tmp_path / "camera.y4m", clip, fps=25)
    x, y, w, h = clip[0][1]
    loose = (x - 4, y - 3, w + 7, h + 6)  # drawn a few pixels loose, as people do
    if how == "url":
        url = c.url + f"/?source=camera&box={','.join(map(str, loose))}&start=1&record=1"
        page, errors = open_page(browser, url, camera)
    elif how == "mask-url":  # a first-frame mask passed inline, as a kiosk would
        m = np.zeros(clip[0][0].shape[:2], np.uint8)
        m[y : y + h, x : x + w] = 255
        buf = io.BytesIO()
        Image.fromarray(m).save(buf, format="PNG")
        data = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        page, errors = open_page(browser, c.url + "/?source=camera&start=1&record=1&mask=" + quote(data), camera)
    else:
        page, errors = open_page(browser, c.url + "/?record=1", camera)
        page.click("#src-camera")
        wait(page, "window.lwl.phase === 'preview'", 30)
        drag(page, loose)
        page.click("#btn-start")
    wait(page, "window.lwl.counts.answered >= 1", 240)
    first = time.monotonic()
    wait(page, "window.lwl.counts.answered >= 14", 240)
    # The camera loops the 8 s clip in real time: stream at least one whole loop, so the answers cover the
    # moving half however fast the service answers (a fast run once answered 14 frames in the still half).
    page.wait_for_timeout(max(0.0, 9.0 - (time.monotonic() - first)) * 1000)
    shot(page, f"camera-{how}")
    page.keyboard.press("Space")  # pause: the last answers arrive, nothing more is sent
    wait(page, "window.lwl.phase === 'paused'", 60)
    results = page.evaluate("() => window.lwl.results")
    ids = [page.evaluate(f"() => window.lwl.sentId({i})") for i in range(page.evaluate("() => window.lwl.sentCount"))]
    ious, shifts = [], []
    for r in results[1:]:
        sent = b64png(page.evaluate("(i) => window.lwl.sentBase64(i)", ids.index(r["id"])))
        truth = square_mask(sent)
        ious.append(iou(b64png(r["labels"]) == 1, truth))
        shifts.append(abs(np.argwhere(truth)[:, 1].min() - x) if truth.any() else 0)
    assert page.evaluate("() => window.lwl.counts.skipped") >= 0
    print(f"camera ({how}): IoU per answered frame {np.round(ious, 2).tolist()}, shift {shifts}")
    assert np.median(ious) >= 0.5, (ious, shifts)
    moved = [v for v, s in zip(ious, shifts, strict=True) if s >= 20]
    assert moved, f"no answered frame showed the object moved (shifts {shifts})"
    assert np.mean(moved) >= 0.5, (ious, shifts)
    status = page.text_content("#status")
    assert "latency" in status and page.text_content("#st-latency") != "–"
    if how == "mouse":  # paused: paint a second object on the background and send it
        page.keyboard.press("n")
        page.keyboard.press("p")
        n = len(results)
        paint(page, [(230, 30), (270, 34), (272, 60), (236, 62), (250, 46)])
        page.keyboard.press("c")
        wait(page, f"window.lwl.results.length === {n + 1}", 60)
        assert sorted(map(int, page.evaluate("() => Object.keys(window.lwl.objects)"))) == [1, 2]
        shot(page, "paused-edit")
    assert errors == []


# ---------------------------------------------------------------- video file: every frame, equal to lwl segment


BUSY_PAGE = """() => {  // a page that is busy 60 ms out of every 80 while it steps through the video
  setInterval(() => { const t = performance.now(); while (performance.now() - t < 60) { /* busy */ } }, 80);
}"""


def write_vfr_video(path: Path, frames: list, gaps_ms: list[int]) -> Path:
    """An H.264 MP4 whose frames are `gaps_ms` apart, in turn (a variable frame rate, as phones record)."""
    from fractions import Fraction

    h, w = frames[0][0].shape[:2]
    with av.open(str(path), "w") as box:
        stream = box.add_stream("libx264", rate=25, options={"bf": "0", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        pts = 0
        for i, (img, _) in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += gaps_ms[i % len(gaps_ms)]
            box.mux(stream.encode(frame))
        box.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("kind", ["cfr", "busy-page", "vfr"])
def test_video_file_every_frame_in_order_equal_to_lwl_segment(serve_tiny, browser, weights, tmp_path, kind) -> None:  # noqa: ANN001
    clip = still_then_moving(2, 10, 120, 160)
    if kind == "vfr":
        video = write_vfr_video(tmp_path / "clip.mp4", clip, [33, 50, 17, 40, 66])
    else:
        video = write_video(tmp_path / "clip.mp4", clip, fps=25)
    page, errors = open_page(browser, serve_tiny.url + "/?record=1")
    if kind == "busy-page":
        page.evaluate(BUSY_PAGE)
    page.set_input_files("#src-file", str(video))
    wait(page, "window.lwl.phase === 'preview'", 30)
    page.keyboard.press("p")  # brush
    page.evaluate("() => { const s = document.getElementById('brush-size'); s.value = 12; "
                  "s.dispatchEvent(new Event('input')); }")
    x, y, w, h = clip[0][1]
    paint(page, [(x + 12, y + 12), (x + 48, y + 14), (x + 46, y + 46), (x + 14, y + 48), (x + 30, y + 30)])
    page.keyboard.press("Enter")
    wait(page, "window.lwl.phase === 'done'", 180)
    shot(page, "video-file")
    results = page.evaluate("() => window.lwl.results")
    assert [r["frame_index"] for r in results] == list(range(len(clip)))
    n = page.evaluate("() => window.lwl.sentCount")
    assert n == len(clip)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(n):
        (frames / f"{i:05d}.jpg").write_bytes(base64.b64decode(page.evaluate("(i) => window.lwl.sentBase64(i)", i)))
        seen = np.argwhere(square_mask(np.asarray(Image.open(frames / f"{i:05d}.jpg"))))
        assert abs(seen[:, 1].min() - clip[i][1][0]) <= 2, f"sent frame {i} is not the video's frame {i}"
    mask = tmp_path / "mask.png"
    mask.write_bytes(base64.b64decode(page.evaluate("() => window.lwl.initMaskBase64()")))
    assert set(np.unique(np.asarray(Image.open(mask)))) == {0, 1}
    ref = lwl_segment(weights, frames, tmp_path / "offline", "--mask", str(mask))
    assert [base64.b64decode(r["labels"]) for r in results] == ref
    # what the page drew is the label map it received
    shown = np.asarray(page.evaluate("() => window.lwl.labels"), np.uint8).reshape(clip[0][0].shape[:2])
    assert np.array_equal(shown, np.asarray(Image.open(io.BytesIO(ref[-1]))))
    assert errors == []


# ---------------------------------------------------------------- corrections, added and removed objects


def test_correction_added_and_removed_object_change_what_comes_back(serve_tiny, browser, tmp_path) -> None:  # noqa: ANN001
    clip = still_then_moving(2, 30, 120, 160)
    page, errors = open_images(browser, serve_tiny.url + "/?record=1&max_inflight=1", write_images(tmp_path, clip))
    x, y, w, h = clip[0][1]
    drag(page, (x, y, w, h))
    page.click("#btn-start")
    wait(page, "window.lwl.counts.answered >= 2", 60)
    page.keyboard.press("Space")
    wait(page, "window.lwl.phase === 'paused'", 60)
    before = page.evaluate("() => window.lwl.results.length")
    labels_before = page.evaluate("() => window.lwl.labels")

    # a correction: paint object 1 over the top-left corner of the frame
    page.keyboard.press("1")
    page.keyboard.press("p")
    paint(page, [(10, 10), (30, 12), (28, 30), (12, 28)])
    page.keyboard.press("c")
    wait(page, f"window.lwl.results.length === {before + 1}", 60)
    corrected = page.evaluate("() => window.lwl.labels")
    assert corrected != labels_before
    assert np.asarray(corrected, np.uint8).reshape(120, 160)[20, 20] == 1  # the painted pixels are object 1 now

    # a new object from a box
    page.keyboard.press("n")
    page.keyboard.press("b")
    drag(page, (100, 20, 40, 30))
    page.keyboard.press("c")
    wait(page, f"window.lwl.results.length === {before + 2}", 60)
    assert sorted(map(int, page.evaluate("() => Object.keys(window.lwl.objects)"))) == [1, 2]

    page.keyboard.press("Space")  # resume: later frames carry both objects
    wait(page, f"window.lwl.results.length >= {before + 5}", 60)
    assert {o["id"] for o in page.evaluate("() => window.lwl.results.at(-1).objects")} == {1, 2}

    page.keyboard.press("Space")
    wait(page, "window.lwl.phase === 'paused'", 60)
    page.click("#objects li[data-id='2'] button")  # remove object 2
    wait(page, "!('2' in window.lwl.objects)", 30)
    page.keyboard.press("Space")
    n = page.evaluate("() => window.lwl.results.length")
    wait(page, f"window.lwl.results.length >= {n + 2} || window.lwl.phase === 'done'", 60)
    assert {o["id"] for o in page.evaluate("() => window.lwl.results.at(-1).objects")} == {1}

    sid = page.evaluate("() => window.lwl.sessionId")
    page.keyboard.press("Escape")  # stop: the session is deleted
    wait(page, "window.lwl.sessionId === null", 30)
    end = time.monotonic() + 30  # the page forgets the session first, then its DELETE completes
    while httpx.get(f"{serve_tiny.url}/v1/sessions/{sid}").status_code != 404 and time.monotonic() < end:
        time.sleep(0.2)
    assert httpx.get(f"{serve_tiny.url}/v1/sessions/{sid}").status_code == 404  # deleted, not only left
    assert errors == []


# ---------------------------------------------------------------- whole-video job


def test_video_job_from_upload_to_download(serve_tiny, browser, tmp_path) -> None:  # noqa: ANN001
    clip = still_then_moving(2, 8, 120, 160)
    video = write_video(tmp_path / "clip.mp4", clip, fps=25)
    page, errors = open_page(browser, serve_tiny.url + "/")
    page.set_input_files("#src-file", str(video))
    wait(page, "window.lwl.phase === 'preview'", 30)
    drag(page, clip[0][1])
    page.click("#btn-job")
    wait(page, "document.querySelectorAll('#job-links a').length === 3", 180)
    shot(page, "video-job")
    assert page.evaluate("() => document.getElementById('job-upload').value") == 1
    assert page.evaluate("() => document.getElementById('job-progress').value") == 1
    links = {a["format"]: a["href"] for a in page.evaluate(
        "() => [...document.querySelectorAll('#job-links a')].map(a => ({format: a.dataset.format, href: a.href}))")}
    got = {fmt: httpx.get(href) for fmt, href in links.items()}
    assert all(r.status_code == 200 for r in got.values())
    with zipfile.ZipFile(io.BytesIO(got["png"].content)) as z:
        assert len([n for n in z.namelist() if n.endswith(".png")]) == len(clip)
    assert len(json.loads(got["rle"].content)["frames"]) == len(clip)
    (tmp_path / "overlay.mp4").write_bytes(got["mp4"].content)
    with av.open(str(tmp_path / "overlay.mp4")) as box:
        assert sum(1 for _ in box.decode(video=0)) == len(clip)
    assert errors == []


# ---------------------------------------------------------------- errors a person can meet


def test_wrong_files_are_explained(serve_tiny, browser, tmp_path) -> None:  # noqa: ANN001
    bogus = tmp_path / "holiday.mp4"
    bogus.write_text("this is not a video\n" * 50)
    page, errors = open_page(browser, serve_tiny.url + "/")
    page.set_input_files("#src-file", str(bogus))
    wait(page, "!document.getElementById('message').hidden", 30)
    assert "cannot decode" in message(page) and "holiday.mp4" in message(page)
    assert page.evaluate("() => window.lwl.phase") == "idle"

    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    page.set_input_files("#src-images", [str(text)])
    wait(page, "document.getElementById('message-text').textContent.includes('notes.png')", 30)
    assert "cannot be decoded" in message(page)
    shot(page, "error-wrong-file")


def test_a_stopped_worker_is_explained(cluster_factory, browser, tmp_path) -> None:  # noqa: ANN001
    c = cluster_factory(True)
    c.start("api")
    worker = c.start("worker")
    c.wait_ready(workers=1)
    clip = still_then_moving(3, 0, 120, 160)
    page, errors = open_images(browser, c.url + "/", write_images(tmp_path, clip))
    drag(page, clip[0][1])
    worker.stop()
    page.click("#btn-start")
    wait(page, "!document.getElementById('message').hidden", 60)
    text = message(page)
    assert "did not start" in text and ("no_capacity" in text or "no_worker" in text), text
    assert page.is_visible("#message-actions button")  # Retry
    assert page.evaluate("() => window.lwl.phase") == "preview"
    shot(page, "error-no-worker")
    page.reload()
    wait(page, "document.body.dataset.ready === '1'", 30)
    wait(page, "document.getElementById('message-text').textContent.includes('no worker is live')", 30)


def test_a_dropped_connection_offers_reconnect_then_restart(cluster_factory, browser, tmp_path) -> None:  # noqa: ANN001
    c = cluster_factory(False, LWL_WEIGHTS="", LWL_CROP_SIZE="")  # the bundled model: the object is found
    serve = c.start("serve")
    c.wait_ready(workers=1)
    clip = still_then_moving(2, 40, 120, 160)
    page, errors = open_images(browser, c.url + "/?record=1&max_inflight=1", write_images(tmp_path, clip))
    page.keyboard.press("p")  # paint the square (the bundled model starts far better from a mask than a box)
    x, y, w, h = clip[0][1]
    paint(page, [(x + 6, y + 6), (x + w - 6, y + 8), (x + w - 6, y + h - 6), (x + 8, y + h - 6),
                 (x + w / 2, y + h / 2)])
    page.click("#btn-start")
    wait(page, "window.lwl.counts.answered >= 2", 60)
    serve.stop()  # the service goes away mid-stream
    wait(page, "!document.getElementById('message').hidden && document.body.dataset.phase === 'paused'", 60)
    text = message(page)
    assert any(w in text for w in ("dropped", "restarting", "going away")), text
    buttons = page.evaluate("() => [...document.querySelectorAll('#message-actions button')].map(b => b.textContent)")
    assert buttons == ["Reconnect", "Restart session"]
    shot(page, "error-connection-dropped")

    c.start("serve")  # back, but `lwl serve` kept its sessions in memory: this one is gone
    c.wait_ready(workers=1)
    old = page.evaluate("() => window.lwl.sessionId")
    page.click("#message-actions button:text('Reconnect')")
    wait(page, "document.getElementById('message-text').textContent.includes('does not exist')", 30)
    assert page.evaluate("() => [...document.querySelectorAll('#message-actions button')].map(b => b.textContent)") \
        == ["Restart session"]
    n = page.evaluate("() => window.lwl.counts.answered")
    page.click("#message-actions button:text('Restart session')")  # a new session from the frame on screen
    wait(page, "window.lwl.sessionId !== null && window.lwl.phase === 'streaming'", 60)
    assert page.evaluate("() => window.lwl.sessionId") != old
    wait(page, "window.lwl.counts.answered >= 2 || window.lwl.phase === 'done'", 60)
    assert n >= 2 and 1 in {o["id"] for o in page.evaluate("() => window.lwl.results.at(-1).objects")}
    assert errors == [] or all("WebSocket" in e or "Failed to load resource" in e for e in errors), errors


# Holds every Stream.send until releaseSends(), which also puts the plain send back. The page's modules are
# singletons per URL, so patching the class the test imports patches the page's streams.
HOLD_SENDS = """async () => {
  const m = await import(new URL("web/js/api.js", document.baseURI).href);
  const send = m.Stream.prototype.send;
  let release;
  const released = new Promise((r) => { release = r; });
  window.heldSends = 0;
  window.settledSends = 0;
  window.releaseSends = () => { m.Stream.prototype.send = send; release(); };
  m.Stream.prototype.send = async function (...args) {
    window.heldSends += 1;
    await released;
    try { return await send.apply(this, args); } finally { window.settledSends += 1; }
  };
}"""


def test_reconnect_after_an_api_restart_resumes_with_every_frame_once(cluster_factory, browser, tmp_path) -> None:  # noqa: ANN001
    """api + worker + Redis: the api is killed with frames in flight and started again; Reconnect resumes the
    stream (resume_from): the frames the session had accepted are answered, the others sent again, and every
    frame of the images is segmented exactly once, in order. One frame's send is held across the kill, so it
    fails after the page has said the stream closed: that must not replace the message and its Reconnect."""
    c = cluster_factory(True)
    api = c.start("api")
    c.start("worker")
    c.wait_ready(workers=1)
    clip = still_then_moving(2, 22, 120, 160)
    page, errors = open_images(browser, c.url + "/?record=1&max_inflight=4", write_images(tmp_path, clip))
    page.keyboard.press("p")
    x, y, w, h = clip[0][1]
    paint(page, [(x + 6, y + 6), (x + w - 6, y + h - 6), (x + w / 2, y + h / 2)])
    page.click("#btn-start")
    wait(page, "window.lwl.counts.answered >= 3", 60)
    page.evaluate(HOLD_SENDS)
    wait(page, "window.heldSends > 0", 60)  # the next frame waits inside Stream.send
    api.stop(signal.SIGKILL)  # a crash: nothing is said to the page, frames are in flight
    wait(page, "!document.getElementById('message').hidden && document.body.dataset.phase === 'paused'", 60)
    page.evaluate("() => window.releaseSends()")  # the held send now meets a closed socket
    wait(page, "window.settledSends === window.heldSends", 30)
    page.wait_for_timeout(100)  # the sender's own reaction to the failed send runs after it settles
    print("page said:", message(page))
    assert "Reconnect resumes them" in message(page)
    c.start("api")
    c.wait_ready(workers=1)
    page.click("#message-actions button:text('Reconnect')")
    wait(page, "window.lwl.phase === 'done'", 120)
    results = page.evaluate("() => window.lwl.results")
    indices = [r["frame_index"] for r in results]
    assert indices == list(range(len(clip))), indices  # the first frame and every later one, once, in order
    seqs = [r["seq"] for r in results[1:]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    meta = c.redis_client().hgetall(f"{c.prefix}:session:{page.evaluate('() => window.lwl.sessionId')}")
    assert int(meta["frames"]) == len(clip), meta  # the tracker stepped each frame once
    assert errors == [] or all("WebSocket" in e or "Failed to load resource" in e for e in errors), errors


def test_phone_sized_screen_and_no_token_in_urls(serve_tiny, browser, tmp_path) -> None:  # noqa: ANN001
    clip = still_then_moving(2, 6, 120, 160)
    files = write_images(tmp_path, clip)
    b = browser(None)
    page = b.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    errors = page_errors(page)
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.on("request", lambda r: urls.append(r.url))
    page.goto(serve_tiny.url + "/?record=1")
    wait(page, "document.body.dataset.ready === '1'", 30)
    page.set_input_files("#src-images", files)
    wait(page, "window.lwl.phase === 'preview'", 30)
    drag(page, clip[0][1])
    page.click("#btn-start")
    wait(page, "window.lwl.phase === 'done'", 60)
    shot(page, "phone")
    # nothing wider than the screen; the frame fits it
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    assert page.locator("#view").bounding_box()["width"] <= 390
    assert page.locator("#btn-start").bounding_box()["height"] >= 30  # finger-sized
    # the session token never travels in a URL (REST: header; WebSocket: first message)
    assert urls and not [u for u in urls if "token" in u.lower()], urls
    assert any(u.startswith("ws://") and "/stream" in u for u in urls)
    assert errors == []


def test_a_model_without_box_encoder_offers_the_brush_only(cluster_factory, browser, tmp_path) -> None:  # noqa: ANN001
    from model.testing import tiny_weights

    c = cluster_factory(False, LWL_WEIGHTS=str(tiny_weights(tmp_path / "nobox.safetensors", with_box=False)))
    c.start("serve")
    c.wait_ready(workers=1)
    assert httpx.get(c.url + "/v1/info").json()["models"][0]["box_init"] is False
    page, errors = open_page(browser, c.url + "/")
    assert page.is_disabled("#tool-box")
    assert page.get_attribute("#tool-brush", "aria-pressed") == "true"
    assert "mask start only" in page.text_content("#model-info")
    page.keyboard.press("b")  # the shortcut explains instead of switching
    assert "no box encoder" in message(page)
    assert errors == []


def _png(arr: np.ndarray, mode: str, **save: object) -> bytes:
    """A mask picture as people and tools write them (Pillow's encoder picks filters and bit depths)."""
    from model.media import DAVIS_PALETTE

    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if mode == "P":
        im = Image.fromarray(arr.astype(np.uint8), mode="P")
        im.putpalette(DAVIS_PALETTE.reshape(-1).tolist())
    elif mode == "P4":  # a small palette: Pillow writes 4 bits per pixel
        im = Image.fromarray(arr.astype(np.uint8), mode="P")
        im.putpalette(DAVIS_PALETTE[:16].reshape(-1).tolist())
    else:
        im = im.convert(mode)
    im.save(buf, format="PNG", **save)
    return buf.getvalue()


def test_the_page_reads_masks_as_the_service_does(serve_tiny, browser) -> None:  # noqa: ANN001
    """The page's PNG reader (results and URL masks) against model.media.read_label_png, id 7 and 128 too
    (their palette colours repeat grey levels, so a canvas could not tell them apart)."""
    from model.media import DAVIS_PALETTE, read_label_png

    rng = np.random.default_rng(1)
    ids = rng.choice(np.array([0, 1, 2, 7, 21, 128, 200], np.uint8), size=(37, 53))
    few = rng.choice(np.array([0, 1, 3, 7], np.uint8), size=(37, 53))
    binary = (rng.random((37, 53)) > 0.6).astype(np.uint8) * 255
    two = np.zeros((37, 53, 3), np.uint8)
    two[3:9, 4:20] = (250, 10, 10)
    two[20:30, 30:50] = (10, 10, 250)
    two[12:16, 2:8] = (250, 10, 10)
    pal = np.zeros((37, 53, 3), np.uint8)
    pal[3:9, 4:20] = DAVIS_PALETTE[3]
    pal[20:30, 30:50] = DAVIS_PALETTE[7]
    cases = {
        "rgb-two-colours": _png(two, "RGB"), "rgb-palette-colours": _png(pal, "RGB"),
        "indexed": _png(ids, "P"), "indexed-4bit": _png(few, "P4"), "indexed-optimised": _png(ids, "P", optimize=True),
        "grey-ids": _png(ids, "L"), "grey-binary": _png(binary, "L"), "rgb-binary": _png(binary, "RGB"),
        "rgba-binary": _png(binary, "RGBA"), "one-bit": _png(binary, "1"),
    }
    page, errors = open_page(browser, serve_tiny.url + "/")
    for name, data in cases.items():
        got = page.evaluate("""async (b64) => {
            const m = await import('./web/js/labels.js');
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            return Array.from(await m.labelsFromImage(new Blob([bytes]), 53, 37));
        }""", base64.b64encode(data).decode())
        want = read_label_png(data)
        assert np.array_equal(np.asarray(got, np.uint8).reshape(37, 53), want), name
    got = page.evaluate("""async (b64) => {
        const m = await import('./web/js/labels.js');
        return Array.from((await m.decodeLabelPng(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)))).labels);
    }""", base64.b64encode(cases["indexed"]).decode())
    assert np.array_equal(np.asarray(got, np.uint8).reshape(37, 53), ids)
    assert errors == []
