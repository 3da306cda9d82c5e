"""What every route is given (FastAPI dependencies): the app's `Service` (session and job tokens checked
against their records, per-API-key limits, the job queue's room, worker placement) and the credential a
request presents. Routes declare `svc: Svc, token: Token` instead of repeating the three token sources.

The credential is only read here; each route checks it (`svc.session(sid, token)`) where it did before,
after FastAPI has validated the request, so a malformed request still gets its 422 first."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends, Form, Header, Query, Request
from starlette.requests import HTTPConnection

from service import access
from service.backends import Backend
from service.checks import check_id, check_token
from service.errors import ServiceError
from service.placement import Placement
from service.settings import Settings


class Service:
    """Shared logic of the REST and WebSocket handlers (one per app, `app.state.service`)."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.s = settings
        self.b = backend
        self.place = Placement(settings, backend)

    async def session(self, sid: str, token: str | None) -> dict[str, str]:
        """A session's record, if `token` is the one its creation answered."""
        check_id(sid, "session")
        if token is not None and not isinstance(token, str):
            raise ServiceError(401, "missing_token", "session token must be a string")
        meta = await self.b.get_session(sid)
        if meta is None:
            raise ServiceError(404, "unknown_session", f"unknown session {sid} (never created, deleted or expired)")
        check_token(token, meta.get("token_sha256", ""), "session")
        return meta

    async def job(self, jid: str, token: str | None) -> dict[str, str]:
        """A job's record, if `token` is the one its creation answered (as sessions)."""
        check_id(jid, "job")
        rec = await self.b.get_job(jid)
        if rec is None:
            raise ServiceError(404, "unknown_job", f"unknown job {jid} (never created, deleted, or removed "
                               f"LWL_JOB_RETENTION_H={self.s.job_retention_h:g} h after it finished)")
        check_token(token, rec.get("token_sha256", ""), "job")
        return rec

    async def admit(self, request: Request, kind: str, item: str) -> None:
        """Per-key limit on live sessions / queued+running jobs (service.access.admit): 429 when full.
        A claim of a request that then fails is released by the API-key middleware."""
        limit = self.s.max_sessions_per_key if kind == "sessions" else self.s.max_jobs_per_key

        async def live(other: str) -> bool:
            if kind == "sessions":
                return await self.b.get_session(other) is not None
            rec = await self.b.get_job(other)
            return rec is not None and rec.get("state") in ("queued", "running")

        if not await access.admit(self.b, request, kind, item, limit, live):
            what = "live sessions" if kind == "sessions" else "queued or running jobs"
            setting = "LWL_MAX_SESSIONS_PER_KEY" if kind == "sessions" else "LWL_MAX_JOBS_PER_KEY"
            raise ServiceError(429, f"too_many_{kind}", f"this API key holds {limit} {what}, the most "
                               f"{setting} allows; delete one or wait for one to end", headers={"Retry-After": "5"})

    async def job_counts(self) -> dict[str, int]:
        """Jobs by state (the jobs retention has not removed yet)."""
        counts = {"queued": 0, "running": 0, "done": 0, "failed": 0}
        for jid in await self.b.job_ids():
            rec = await self.b.get_job(jid)
            if rec and rec.get("state") in counts:
                counts[rec["state"]] += 1
        return counts

    async def check_job_room(self) -> None:
        """LWL_MAX_QUEUED_JOBS: queued + running jobs of the whole deployment, whoever sent them (uploads
        wait on the results volume until a worker takes them)."""
        counts = await self.job_counts()
        active = counts["queued"] + counts["running"]
        if active >= self.s.max_queued_jobs:
            raise ServiceError(503, "queue_full", f"{active} jobs are queued or running, the most "
                               f"LWL_MAX_QUEUED_JOBS={self.s.max_queued_jobs} allows; retry later",
                               headers={"Retry-After": "10"})

    def ws_url(self, request: Request, sid: str, token: str) -> str:
        base = self.s.public_url.rstrip("/") if self.s.public_url else str(request.base_url).rstrip("/")
        base = "ws" + base[4:] if base.startswith("http") else base
        return f"{base}/v1/sessions/{sid}/stream?token={token}"

    def jobs_dir(self) -> Path:
        d = Path(self.s.results_dir) / "jobs"
        d.mkdir(parents=True, exist_ok=True)
        return d


def get_service(conn: HTTPConnection) -> Service:
    """The app's Service (HTTP and WebSocket routes alike)."""
    return conn.app.state.service


def credential(authorization: str | None = Header(None, include_in_schema=True),
               x_session_token: str | None = Header(None),
               token: str | None = Query(None, description="session token (alternative to the headers)")) -> str | None:
    """The session or job token a request presents: `Authorization: Bearer`, `X-Session-Token` or `?token=`."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return x_session_token or token


Svc = Annotated[Service, Depends(get_service)]
Token = Annotated[str | None, Depends(credential)]
BoxesForm = Annotated[str | None, Form(description='JSON {"1": [x, y, w, h]}')]  # objects by box, as created
