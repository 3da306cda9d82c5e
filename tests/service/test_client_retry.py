"""The SDK's bounded retries of 503/429 + Retry-After, against a small ASGI app served by uvicorn on
loopback (real HTTP): which calls are retried, how often, and that a long Retry-After is not waited."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.client import AsyncClient, Client, LWLError

CREATED = {"session_id": "s1", "token": "t", "ws_url": "ws://x", "worker_id": "w", "objects": [],
           "result": {}}


def _app(calls: Counter, plan: dict[str, list[tuple[int, str | None]]]) -> FastAPI:
    """Each path answers from its plan in turn (status, Retry-After), then 2xx."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "DELETE"])
    async def any_call(path: str, request: Request) -> JSONResponse:
        key = f"{request.method} /{path}"
        n = calls[key]
        calls[key] += 1
        steps = plan.get(key, [])
        if n < len(steps):
            status, after = steps[n]
            return JSONResponse({"code": "no_capacity", "detail": "busy"}, status,
                                headers={"Retry-After": after} if after is not None else None)
        if key == "POST /v1/sessions":
            return JSONResponse(CREATED, 201)
        if key == "POST /v1/jobs":
            return JSONResponse({"job_id": "j1", "token": "jt", "state": "queued", "status_url": "u"}, 202)
        return JSONResponse({"job_id": "j1", "state": "done", "auth": request.headers.get("authorization"),
                             "key": request.headers.get("x-api-key")})

    return app


@pytest.fixture
def server() -> Iterator:
    calls: Counter = Counter()
    plan: dict[str, list[tuple[int, str | None]]] = {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(_app(calls, plan), host="127.0.0.1", port=port, log_level="error"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    while not srv.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", calls, plan
    srv.should_exit = True
    t.join(5)


def test_creation_and_reads_are_retried_with_retry_after(server) -> None:  # noqa: ANN001
    url, calls, plan = server
    plan["POST /v1/sessions"] = [(503, "0"), (429, "0")]
    plan["POST /v1/jobs"] = [(503, "0")]
    plan["GET /v1/jobs/j1"] = [(503, "1")]
    with Client(url, api_key="k" * 20) as c:
        assert c.create_session(b"img", boxes={1: (0, 0, 2, 2)}).id == "s1"
        assert calls["POST /v1/sessions"] == 3
        job = c.submit_video(b"video", boxes={1: (0, 0, 2, 2)})
        assert calls["POST /v1/jobs"] == 2 and job == "j1" and job.token == "jt"
        t0 = time.monotonic()
        st = c.job(job)
        assert time.monotonic() - t0 >= 0.9 and calls["GET /v1/jobs/j1"] == 2  # waited Retry-After: 1
        assert st["auth"] == "Bearer jt" and st["key"] == "k" * 20
        assert c.job("j1")["auth"] == "Bearer jt"  # the client remembers a job's token by id


def test_retries_are_bounded(server) -> None:  # noqa: ANN001
    url, calls, plan = server
    plan["GET /v1/jobs/j1"] = [(503, "0")] * 10
    plan["DELETE /v1/jobs/j1"] = [(503, None)]  # no Retry-After: not retried
    plan["POST /v1/sessions"] = [(503, "3600")]  # longer than the wait budget: not waited for
    with Client(url, retries=3, max_retry_wait_s=5) as c:
        with pytest.raises(LWLError) as e:
            c.job("j1", token="x")
        assert e.value.status == 503 and calls["GET /v1/jobs/j1"] == 4  # 1 + 3 retries
        with pytest.raises(LWLError):
            c.delete_job("j1", token="x")
        assert calls["DELETE /v1/jobs/j1"] == 1
        t0 = time.monotonic()
        with pytest.raises(LWLError):
            c.create_session(b"img", boxes={1: (0, 0, 2, 2)})
        assert time.monotonic() - t0 < 2 and calls["POST /v1/sessions"] == 1


def test_frames_are_never_retried(server) -> None:  # noqa: ANN001
    url, calls, plan = server
    plan["POST /v1/sessions/s1/frames"] = [(503, "0")]
    with Client(url) as c:
        s = c.create_session(b"img", boxes={1: (0, 0, 2, 2)})
        with pytest.raises(LWLError):
            s.segment(b"frame")
    assert calls["POST /v1/sessions/s1/frames"] == 1


def test_async_client_retries(server) -> None:  # noqa: ANN001
    url, calls, plan = server
    plan["POST /v1/sessions"] = [(503, "0"), (503, "0")]

    async def run() -> None:
        async with AsyncClient(url) as c:
            s = await c.create_session(b"img", boxes={1: (0, 0, 2, 2)})
            assert s.id == "s1"

    asyncio.run(run())
    assert calls["POST /v1/sessions"] == 3
