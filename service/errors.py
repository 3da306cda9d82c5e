"""Errors a client can cause, one type for the api and the worker, and how the api answers every
error: the JSON body `{"code", "detail"}` with its status (4xx for the client's mistakes, 503 +
Retry-After when the store or the workers are unavailable, never a plain-text 500 or a traceback)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service import obs
from service.backends import STORE_ERRORS
from service.schemas import ErrorBody

log = logging.getLogger("lwl.api")

# the error answers of a route in the OpenAPI document
ERRORS: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody}
                                           for status in (400, 401, 403, 404, 413, 422, 429, 503, 504)}


class ServiceError(Exception):
    """A request or op that fails with a status, a machine code and a sentence (the api answers it as
    is; a worker's travels back to the api in its reply)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def install_error_handlers(app: FastAPI, backend: Any, retry_after_s: int) -> None:
    """Every error the app can meet as our JSON shape; store errors as 503 + Retry-After."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        obs.ERRORS.labels(exc.code).inc()
        return JSONResponse({"code": exc.code, "detail": exc.detail}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing and parsing errors (unknown path, wrong method, unreadable body) in our JSON shape."""
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        obs.ERRORS.labels(code).inc()
        detail = exc.detail if isinstance(exc.detail, str) else "bad request"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only those of the first route matched
            headers["Allow"] = ", ".join(sorted({m for r in app.routes if isinstance(r, APIRoute)
                                                 and r.matches(request.scope)[0] != Match.NONE for m in r.methods}))
        return JSONResponse({"code": code, "detail": detail}, exc.status_code, headers=headers)

    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        """Redis unreachable, restarting or loading: 503 + Retry-After, never a 500 (readyz says the same)."""
        obs.ERRORS.labels("store_down").inc()
        await backend.reset_idle()
        log.warning("store unavailable", extra={"path": request.url.path, "error": type(exc).__name__})
        return JSONResponse({"code": "store_down", "detail": "the store (Redis) is unavailable; retry shortly"},
                            503, headers={"Retry-After": str(retry_after_s)})

    for err in STORE_ERRORS:
        app.add_exception_handler(err, _store_down)

    @app.exception_handler(Exception)
    async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
        """Last resort, also for errors raised in middleware (the API key check reads Redis): a JSON body,
        never a plain-text 500 or a traceback."""
        if isinstance(exc, STORE_ERRORS):
            return await _store_down(request, exc)
        obs.ERRORS.labels("internal").inc()
        return JSONResponse({"code": "internal", "detail": "internal error"}, 500)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        obs.ERRORS.labels("validation").inc()
        parts = [f"{'.'.join(str(x) for x in e.get('loc', []))}: {e.get('msg')}" for e in exc.errors()]
        return JSONResponse({"code": "invalid_request", "detail": "; ".join(parts)}, 422)
