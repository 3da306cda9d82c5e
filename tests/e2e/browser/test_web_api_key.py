"""The page against a service with API keys: it shows the key field because /v1/info says a key is
needed, explains the refusal without one, and works once a key is entered, keeping the key in this tab's
sessionStorage and out of every URL."""

from __future__ import annotations

from .conftest import page_errors
from .test_web_page import drag, message, still_then_moving, wait, write_images

KEY = "web-page-key-0123456789"


def test_the_page_asks_for_the_key_and_sends_it_as_a_header(cluster_factory, browser, tmp_path) -> None:  # noqa: ANN001
    c = cluster_factory(False, LWL_API_KEYS=f"page:{KEY}")
    c.start("serve")
    c.wait_ready(workers=1)
    clip = still_then_moving(2, 4, 120, 160)
    page = browser(None).new_page(viewport={"width": 1280, "height": 800})
    errors = page_errors(page)
    urls: list[str] = []
    keyed: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))

    def seen(r) -> None:  # noqa: ANN001 - playwright Request
        urls.append(r.url)
        if r.headers.get("x-api-key") == KEY:
            keyed.append(r.url)

    page.on("request", seen)
    page.goto(c.url + "/?record=1")
    wait(page, "document.body.dataset.ready === '1'", 30)
    assert page.is_visible("#key-form")
    assert "needs an API key" in message(page)

    page.set_input_files("#src-images", write_images(tmp_path, clip))
    wait(page, "window.lwl.phase === 'preview'", 30)
    drag(page, clip[0][1])
    page.click("#btn-start")
    wait(page, "document.getElementById('message-text').textContent.includes('missing_api_key')", 30)
    assert page.evaluate("() => window.lwl.phase") == "preview"

    page.fill("#api-key", KEY)
    page.click("#key-save")
    page.click("#btn-start")
    wait(page, "window.lwl.phase === 'done'", 90)
    assert len(page.evaluate("() => window.lwl.results")) >= len(clip) - 1
    assert page.evaluate("() => sessionStorage.getItem('lwl-api-key')") == KEY
    assert any("/v1/sessions" in u for u in keyed), keyed
    assert urls and not [u for u in urls if KEY in u], urls  # the key never travels in a URL
    # the one refusal we caused is the only thing the browser logged
    assert [e for e in errors if "status of 401" not in e] == [], errors
