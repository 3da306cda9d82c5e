"""The web page: static files from `service/web/` served at `/`, with a Content-Security-Policy.

The page is plain HTML, CSS and JavaScript modules written for this project (no build step, nothing
from the internet). It talks only to the public REST + WebSocket API, so it is also the reference
browser client. This module only serves files; it knows nothing of sessions.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent / "web"


def csp_sources(text: str) -> str:
    """`self https://portal.example.com` -> `'self' https://portal.example.com`: the keywords quoted, so the
    setting needs no quotes (which env files and ConfigMaps treat differently)."""
    words = text.replace(",", " ").split() or ["'self'"]
    return " ".join(f"'{w}'" if w.lower() in ("self", "none") else w for w in words)


def content_security_policy(frame_ancestors: str) -> str:
    """Only our own scripts, styles and connections; frames and images may be blobs or data URLs.

    `connect-src 'self'` covers the same-origin WebSocket too (CSP level 3); `data:` lets a kiosk pass
    its first mask inline as `?mask=data:image/png;base64,...`.
    """
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self' data: blob:",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        f"frame-ancestors {csp_sources(frame_ancestors)}",
    ])


def mount_web(app: FastAPI, frame_ancestors: str = "self") -> None:
    """Serve the page at `/` and its assets under `/web/`, each answer with the security headers."""
    csp = content_security_policy(frame_ancestors)
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Permissions-Policy": "camera=(self)"}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={**headers,
                            "Cache-Control": "no-cache"})

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

    @app.middleware("http")
    async def _web_headers(request: Request, call_next):  # noqa: ANN202 - Starlette middleware protocol
        response: Response = await call_next(request)
        if request.url.path.startswith("/web/"):
            response.headers.update(headers)
            response.headers["Cache-Control"] = "no-cache"
        return response
