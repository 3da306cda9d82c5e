"""The api: FastAPI, stateless, runs no model code. Validates input, places sessions on workers,
relays frames and results in order, serves video jobs. All state lives in the store/broker.

The app is assembled here: routers by resource (service/routes/: sessions and their WebSocket stream,
jobs, ops), the error handlers (service.errors), the middleware (body size, API keys, CORS), the docs
and the web page.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from service import __version__, access, obs
from service import jobs as jobfiles
from service.backends import Backend
from service.deps import Service
from service.docs import mount_docs
from service.errors import install_error_handlers
from service.routes import jobs, ops, sessions
from service.settings import Settings
from service.web import mount_web


def create_app(settings: Settings, backend: Backend, worker: Any = None) -> FastAPI:
    """The FastAPI app. With `worker` (lwl serve) the in-process worker starts and stops with the app."""
    svc = Service(settings, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if worker is not None:
            await worker.start()
        # job retention and crash leftovers (service.jobs): a pass now, then periodically
        sweeper = asyncio.create_task(jobfiles.sweep_forever(backend, svc.jobs_dir(),
                                                             settings.job_retention_h * 3600))
        yield
        sweeper.cancel()
        if worker is not None:
            await worker.stop()
        await backend.close()

    app = FastAPI(title="lwl-vos", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Video object segmentation (LWL): live sessions over REST/WebSocket, "
                  "video jobs. "
                  "See docs/API.md for the WebSocket protocol.")
    app.state.service = svc
    app.state.worker = worker
    mount_docs(app)  # /docs and /redoc with their assets served here, not from a CDN
    install_error_handlers(app, backend, retry_after_s=max(1, int(settings.heartbeat_s * 2)))
    _install_middleware(app, settings, backend)
    for router in (ops.router, sessions.router, jobs.router):
        app.include_router(router)
    if settings.web_ui:
        mount_web(app, settings.web_frame_ancestors)
    return app


def _install_middleware(app: FastAPI, settings: Settings, backend: Backend) -> None:
    """Body size first, then API keys (LWL_API_KEYS), CORS outermost."""

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Response:
        cl = request.headers.get("content-length")
        if cl and cl.isdigit() and int(cl) > settings.max_upload_bytes + 1024 * 1024:
            obs.ERRORS.labels("upload_too_large").inc()
            return JSONResponse({"code": "upload_too_large", "detail": f"request body of {int(cl)} bytes "
                                 f"is larger than LWL_MAX_UPLOAD_MB={settings.max_upload_mb:g} MB"}, 413)
        return await call_next(request)

    if settings.api_key_hashes:  # LWL_API_KEYS: X-API-Key on /v1 calls (service.access)
        app.middleware("http")(access.api_key_middleware(settings.api_key_hashes, backend))
    if settings.cors_list:  # added last, so outermost: refusals by the middleware above carry CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_list, allow_methods=["*"],
                           allow_headers=["*"])
