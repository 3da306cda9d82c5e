"""/docs (Swagger UI) and /redoc (ReDoc) load every asset from the service itself, never from a CDN."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.backends import MemoryBackend
from service.settings import Settings

# src="...", href="...", Swagger UI's `url: '...'` and ReDoc's spec-url="..."
_URL = re.compile(r"""(?:\b(?:src|href|spec-url)\s*=\s*|\burl:\s*)["']([^"']+)["']""")
_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


@pytest.fixture
def client(tmp_path) -> TestClient:  # noqa: ANN001
    with TestClient(create_app(Settings(results_dir=str(tmp_path)), MemoryBackend())) as c:
        yield c


def _referenced(html: str) -> list[str]:
    return _URL.findall(html)


@pytest.mark.parametrize(("page", "expected"), [
    ("/docs", {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css", "/openapi.json"}),
    ("/redoc", {"/docs-assets/redoc.standalone.js", "/openapi.json"}),
])
def test_docs_pages_reference_only_same_origin_assets(client: TestClient, page: str, expected: set[str]) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == "img-src 'self' data: blob:"  # e.g. ReDoc's logo from its CDN
    urls = _referenced(r.text)
    assert expected <= set(urls), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
    assert not re.search(r"https?://|cdn\.|googleapis", r.text), "an absolute URL is left in the page"
    for url in urls:
        a = client.get(url)
        assert a.status_code == 200, url
        suffix = url[url.rfind("."):]
        assert _TYPES[suffix] in a.headers["content-type"], (url, a.headers["content-type"])
        assert len(a.content) > (100 if suffix == ".png" else 1000), url


def test_docs_follow_the_proxy_prefix(tmp_path) -> None:  # noqa: ANN001
    app = create_app(Settings(results_dir=str(tmp_path)), MemoryBackend())
    with TestClient(app, root_path="/lwl") as c:
        urls = _referenced(c.get("/docs").text) + _referenced(c.get("/redoc").text)
    assert urls and all(u.startswith("/lwl/") for u in urls), urls


def test_docs_assets_are_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]

