"""API documentation pages: Swagger UI at `/docs` and ReDoc at `/redoc`, with every asset served here.

FastAPI's own pages load Swagger UI, ReDoc, a favicon and Google Fonts from CDNs, so they are blank
without internet. The service turns those off (`FastAPI(docs_url=None, redoc_url=None)`) and calls
`mount_docs`, which serves the same pages with the JavaScript and CSS shipped by the PyPI package
fastapi-offline (a dependency), mounted under `/docs-assets/`. Nothing is fetched at run time.

ReDoc always draws its vendor's logo from cdn.redoc.ly (a hard-coded <img>, hidden when it fails to load):
the pages' Content-Security-Policy allows images only from the service itself, so the browser never asks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
# The files this module needs from the package; each is checked at start-up.
SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js",
                                              "favicon.png")
# Only images are restricted: both UIs need inline scripts/styles, which the page at `/` (service/web.py) forbids.
DOCS_CSP = "img-src 'self' data: blob:"


def assets_dir() -> Path:
    """The folder of Swagger UI and ReDoc assets inside the installed fastapi-offline package."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the API docs need the package fastapi-offline: pip install fastapi-offline")
    folder = Path(spec.origin).parent / "static"
    missing = [n for n in (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON) if not (folder / n).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline at {folder} lacks {', '.join(missing)}")
    return folder


def mount_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve Swagger UI at `docs_url` and ReDoc at `redoc_url` for `app.openapi_url`, assets included."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "")  # behind a proxy that strips a prefix
        return f"{root}{app.openapi_url}", f"{root}{ASSETS_URL}"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        page = get_swagger_ui_html(openapi_url=openapi, title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{assets}/{SWAGGER_JS}", swagger_css_url=f"{assets}/{SWAGGER_CSS}",
                                   swagger_favicon_url=f"{assets}/{FAVICON}",
                                   # no badge image from validator.swagger.io
                                   swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})})
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        page = get_redoc_html(openapi_url=openapi, title=f"{app.title} - ReDoc", redoc_js_url=f"{assets}/{REDOC_JS}",
                              redoc_favicon_url=f"{assets}/{FAVICON}", with_google_fonts=False)
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
