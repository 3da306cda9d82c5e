"""/docs (Swagger UI) and /redoc (ReDoc) of a real `lwl serve` render in Chromium with no network at all.

Every request the page makes to a host other than the service (127.0.0.1) is aborted and recorded: the pages
must render from the service's own assets and must not even try to reach anything else. ReDoc's hard-coded
vendor logo (cdn.redoc.ly) is refused by the page's Content-Security-Policy before any request is made.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from .conftest import page_errors


@pytest.fixture
def serve(cluster_factory):  # noqa: ANN001, ANN201
    """`lwl serve` with the tiny test model."""
    c = cluster_factory(False)
    c.start("serve")
    c.wait_ready(workers=1)
    return c


def offline_page(browser):  # noqa: ANN001, ANN201
    """A page whose requests to any host but 127.0.0.1 are aborted; returns it and the list of those requests."""
    page = browser().new_page(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_local(route) -> None:  # noqa: ANN001 - playwright Route
        url = route.request.url
        if urlparse(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page.route("**/*", only_local)
    return page, outside


def test_swagger_ui_renders_without_network(serve, browser) -> None:  # noqa: ANN001
    page, outside = offline_page(browser)
    errors = page_errors(page)
    page.goto(serve.url + "/docs")
    # the operations are listed: Swagger UI loaded, ran, fetched /openapi.json and rendered it
    page.locator(".opblock-summary-path", has_text="/v1/sessions").first.wait_for(timeout=30_000)
    assert page.locator(".opblock").count() >= 8
    assert "lwl-vos" in page.locator(".info .title").inner_text()
    page.locator(".opblock-summary-path", has_text="/v1/info").first.click()  # an operation opens
    page.locator(".opblock-body").first.wait_for(timeout=10_000)
    assert outside == [], outside
    assert errors == [], errors


def test_redoc_renders_without_network(serve, browser) -> None:  # noqa: ANN001
    page, outside = offline_page(browser)
    errors = page_errors(page)
    page.goto(serve.url + "/redoc")
    page.locator("h1", has_text="lwl-vos").first.wait_for(timeout=30_000)  # ReDoc ran and read /openapi.json
    page.get_by_text("/v1/sessions", exact=False).first.wait_for(state="attached", timeout=30_000)
    assert page.locator("[data-section-id^='operation/']").count() >= 8
    assert outside == [], outside
    logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"  # refused by the CSP: the one expected console error
    assert [e for e in errors if not (logo in e and "Content Security Policy" in e)] == [], errors
