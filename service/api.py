"""The api: FastAPI, stateless, runs no model code. Validates input, places sessions on workers,
relays frames and results in order, serves video jobs. All state lives in the store/broker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import logging
import math
import secrets
import shutil
import time
import uuid
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from model.boxes import clip_box
from model.errors import InputError
from model.media import DAVIS_PALETTE  # numpy + Pillow only
from service import __version__, access, obs
from service import jobs as jobfiles
from service.backends import STORE_ERRORS, MemoryBackend, RedisBackend, Result
from service.codec import pack, splice
from service.docs import mount_docs
from service.schemas import (
    ErrorBody,
    FrameResultOut,
    JobCreated,
    JobStatus,
    ServiceInfo,
    SessionCreated,
    SessionInfo,
)
from service.settings import Settings, parse_crop
from service.web import mount_web

log = logging.getLogger("lwl.api")
PALETTE = DAVIS_PALETTE.tolist()  # the colours of every label PNG, sent by GET /v1/info (computed once)

ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody},
          404: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody},
          429: {"model": ErrorBody}, 503: {"model": ErrorBody}, 504: {"model": ErrorBody}}


class ApiError(Exception):
    """A request that fails with a status, a machine code and a sentence."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


# ============================================================================ input checks (no model code)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token(token: str | None, digest: str, what: str) -> None:
    """A session's or job's token against the digest its record keeps (constant-time compare)."""
    if not token:
        raise ApiError(401, "missing_token", f"{what} token missing: send Authorization: Bearer <token>, "
                       "X-Session-Token or ?token=")
    if not hmac.compare_digest(_hash(token), digest):
        raise ApiError(403, "wrong_token", f"wrong {what} token")


IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")  # still images Pillow reads


def check_image(data: bytes, max_pixels: int, what: str = "image", kind: str = "frame") -> tuple[int, int]:
    """Header-only check of an uploaded frame (kind "frame") or mask (kind "mask"): a known image format,
    the pixel limit. Returns (H, W). No pixels are decoded here, so a small file that would decode to a huge
    image (a 1-bit PNG of 20000x20000) costs nothing; the worker decodes a frame once and answers bad_image
    if it is corrupt."""
    bad = "bad_image" if kind == "frame" else "bad_mask"
    if not data:
        raise ApiError(400, bad, f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            fmt = im.format
    except Image.DecompressionBombError:
        raise ApiError(413, f"{kind}_too_large", f"{what} has more than LWL_MAX_FRAME_PIXELS={max_pixels} "
                       "pixels") from None
    except Exception as exc:  # noqa: BLE001 - any header failure is the client's bad file
        raise ApiError(400, bad, f"{what} cannot be decoded: {type(exc).__name__}: {_plain(exc)}") from None
    if fmt not in IMAGE_FORMATS:
        raise ApiError(400, bad, f"{what} is {fmt}, not one of {', '.join(IMAGE_FORMATS)}")
    if w * h > max_pixels:
        raise ApiError(413, f"{kind}_too_large",
                       f"{what} is {w}x{h} = {w * h} pixels, more than LWL_MAX_FRAME_PIXELS={max_pixels}")
    return h, w


def _plain(exc: Exception) -> str:
    """An exception's message without anything that looks like a server path."""
    return " ".join(w for w in str(exc).split() if "/" not in w or w.startswith("image/"))[:200]


def check_mask(data: bytes, hw: tuple[int, int] | None, max_pixels: int, what: str = "mask") -> None:
    """Header-only mask checks before anything decodes it: a readable image within the pixel limit and,
    when the frame size is known, of that size."""
    mh, mw = check_image(data, max_pixels, what, kind="mask")
    if hw is not None and (mh, mw) != tuple(hw):
        raise ApiError(400, "mask_size_mismatch", f"{what} size {mw}x{mh} differs from the frame size "
                       f"{hw[1]}x{hw[0]}")


def check_count(n: int, limit: int, have: int = 0) -> None:
    """Objects per session: what a session holds plus what a request adds, at most LWL_MAX_OBJECTS."""
    if have + n > limit:
        hint = " (a soft-edged greyscale or anti-aliased mask? save an indexed PNG)" if n > limit else ""
        raise ApiError(400, "too_many_objects", f"{have + n} objects{hint}: a session holds at most "
                       f"LWL_MAX_OBJECTS={limit}")


def check_objects(hw: tuple[int, int], mask: bytes | None, boxes: dict[int, list[float]] | None,
                  max_pixels: int, max_objects: int, have: list[int] | None = None) -> list[int]:
    """Mask/box checks against the frame size and the object limit, before any model work; returns the
    object ids they define. Boxes are clipped to the frame in place. `have`: ids the session tracks already."""
    from model.media import read_label_png  # numpy + Pillow only
    from model.video import Annotation  # no torch

    if mask is None and not boxes:
        raise ApiError(400, "no_objects", "give a mask (indexed PNG) or boxes for at least one object")
    have = have or []
    ids: list[int] = []
    if mask is not None:
        check_mask(mask, hw, max_pixels)
        try:
            lab = read_label_png(mask)
        except InputError as exc:
            raise ApiError(400, "bad_mask", _plain(exc)) from None
        present = Annotation(mask=lab).mask_ids()
        if not present:
            raise ApiError(400, "empty_mask", "mask is empty: it has no object pixels")
        ids += [i for i in present if i not in have]
        if not ids and have and not boxes:
            raise ApiError(400, "no_objects", f"the mask has no new object id: tracked objects are {have}")
    check_count(len(ids) + len(boxes or {}), max_objects, len(have))
    for oid, box in (boxes or {}).items():
        if not (1 <= oid <= 254):
            raise ApiError(400, "bad_object_id", f"object id {oid} must be between 1 and 254")
        if oid in have:
            raise ApiError(400, "duplicate_object", f"object {oid} is tracked already")
        try:  # a box drawn a little past the frame's edge is clipped to it (model.boxes)
            boxes[oid] = list(clip_box(box, hw))
        except InputError as exc:
            raise ApiError(400, "box_outside_frame", f"object {oid}: {exc}") from None
        if oid in ids:
            raise ApiError(400, "duplicate_object", f"object {oid} is given both in the mask and as a box")
        ids.append(oid)
    return ids


def parse_boxes(text: str | None) -> dict[int, list[float]] | None:
    """Boxes as JSON: {"1": [x, y, w, h], ...} or [{"id": 1, "box": [x, y, w, h]}, ...]."""
    if not text:
        return None
    try:
        raw = json.loads(text)
        items = raw.items() if isinstance(raw, dict) else ((d["id"], d["box"]) for d in raw)
        out = {_object_id(k): [float(v) for v in b] for k, b in items}
        if any(len(b) != 4 for b in out.values()):
            raise ValueError("each box needs 4 numbers")
        if not all(math.isfinite(v) for b in out.values() for v in b):
            raise ValueError("box numbers must be finite")
        return out
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise ApiError(400, "bad_boxes", 'boxes must be JSON like {"1": [x, y, w, h]} or '
                       f'[{{"id": 1, "box": [x, y, w, h]}}]: {exc}') from None


def check_format(fmt: str) -> str:
    """The mask format of results: png or rle."""
    if fmt not in ("png", "rle"):
        raise ApiError(400, "bad_format", f"format must be png or rle, not {fmt[:20]!r}")
    return fmt


def session_hw(meta: dict[str, str]) -> tuple[int, int] | None:
    """The session's frame size (H, W), as recorded when it was created."""
    return (int(meta["height"]), int(meta["width"])) if meta.get("height") and meta.get("width") else None


def _object_id(v: Any) -> int:
    """An object id from JSON: an integer or a string of one (not 1.5, not true)."""
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip().lstrip("-").isdigit():
        raise ValueError(f"object id {str(v)[:20]!r} is not an integer")
    return int(v)


SID_CHARS = frozenset("0123456789abcdef")


def check_id(value: str, what: str) -> None:
    """Session and job ids are 32 hex digits; anything else is unknown (and never reaches a store key)."""
    if len(value) != 32 or not set(value) <= SID_CHARS:
        raise ApiError(404, f"unknown_{what}", f"unknown {what} {value[:40]!r}")


# ============================================================================ app


class Service:
    """Shared logic of the REST and WebSocket handlers (one per app)."""

    def __init__(self, settings: Settings, backend: RedisBackend | MemoryBackend) -> None:
        self.s = settings
        self.b = backend

    # ---------------------------------------------------------------- sessions and workers
    async def auth(self, sid: str, token: str | None) -> dict[str, str]:
        check_id(sid, "session")
        if token is not None and not isinstance(token, str):
            raise ApiError(401, "missing_token", "session token must be a string")
        meta = await self.b.get_session(sid)
        if meta is None:
            raise ApiError(404, "unknown_session",
                           f"unknown session {sid} (never created, deleted or expired)")
        check_token(token, meta.get("token_sha256", ""), "session")
        return meta

    async def auth_job(self, jid: str, token: str | None) -> dict[str, str]:
        """A job's record, if `token` is the one its creation answered (as sessions: Service.auth)."""
        check_id(jid, "job")
        rec = await self.b.get_job(jid)
        if rec is None:
            raise ApiError(404, "unknown_job", f"unknown job {jid} (never created, deleted, or removed "
                           f"LWL_JOB_RETENTION_H={self.s.job_retention_h:g} h after it finished)")
        check_token(token, rec.get("token_sha256", ""), "job")
        return rec

    async def admit(self, request: Request, kind: str, item: str, limit: int) -> None:
        """Per-key limit on live sessions / queued+running jobs (service.access.admit): 429 when full.
        A claim of a request that then fails is released by the API-key middleware."""
        async def live(other: str) -> bool:
            if kind == "sessions":
                return await self.b.get_session(other) is not None
            rec = await self.b.get_job(other)
            return rec is not None and rec.get("state") in ("queued", "running")

        if not await access.admit(self.b, request, kind, item, limit, live):
            what = "live sessions" if kind == "sessions" else "queued or running jobs"
            setting = "LWL_MAX_SESSIONS_PER_KEY" if kind == "sessions" else "LWL_MAX_JOBS_PER_KEY"
            raise ApiError(429, f"too_many_{kind}", f"this API key holds {limit} {what}, the most "
                           f"{setting} allows; delete one or wait for one to end",
                           headers={"Retry-After": "5"})

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
            raise ApiError(503, "queue_full", f"{active} jobs are queued or running, the most "
                           f"LWL_MAX_QUEUED_JOBS={self.s.max_queued_jobs} allows; retry later",
                           headers={"Retry-After": "10"})

    async def candidates(self, model: str | None = None) -> list[dict[str, Any]]:
        """Live workers with room, most free capacity first."""
        ws = [w for w in await self.b.live_workers() if w.get("free", 0) > 0 and not w.get("draining")]
        if model:
            ws = [w for w in ws if w.get("model") == model]
        return sorted(ws, key=lambda w: (-w["free"], w.get("memory_bytes", 0)))

    def no_capacity(self) -> ApiError:
        return ApiError(503, "no_capacity", "no worker has room for a new session; retry later",
                        headers={"Retry-After": str(max(1, int(self.s.heartbeat_s * 2)))})

    async def owner(self, sid: str, meta: dict[str, str]) -> str:
        """The session's worker; if it died, move the session to a live worker (which restores it)."""
        wid = meta.get("worker", "")
        if await self.b.worker_alive(wid):
            return wid
        return await self.move(sid, wid)

    async def move(self, sid: str, dead: str) -> str:
        """Give a session whose worker died to the live worker with the most room, and tell that worker
        to adopt it now (restore the snapshot, replay the frames after it, read its frames from then on)."""
        live = await self.b.live_workers()
        cands = await self.candidates() or [w for w in live if not w.get("draining")]
        if not cands:
            raise ApiError(503, "no_worker", "the session's worker is gone and no other worker is live",
                           headers={"Retry-After": str(max(1, int(self.s.heartbeat_s * 2)))})
        new = cands[0]["id"]
        # when the dead worker last beat: the adopting worker reports the gap as lwl_failover_seconds
        since = await self.b.last_beat(dead) or time.time()
        await self.b.update_session(sid, {"worker": new, "moved_since": f"{since:.3f}",
                                          "moved_cause": "worker_died"})
        await self.adopt(sid, new)
        log.info("session moved", extra={"session_id": sid, "from": dead, "to": new})
        return new

    async def adopt(self, sid: str, wid: str) -> None:
        """Ask a worker to hold a session (a no-op for the worker that holds it already)."""
        await self.b.send_work(wid, *pack({"op": "adopt", "sid": sid}))

    async def rpc(self, wid: str, header: dict[str, Any], *blobs: bytes,
                  timeout: float | None = None) -> dict:
        """Send one op to a worker and wait for its reply; worker errors become ApiError."""
        req = uuid.uuid4().hex
        h, body = pack({**header, "req": req}, *blobs)
        await self.b.send_work(wid, h, body)
        return await self.wait_answer(req, wid, timeout or self.s.request_timeout_s)

    async def wait_answer(self, req: str, wid: str, timeout: float, sid: str = "") -> dict:
        """The reply to one REST call; worker errors become ApiError, a worker that dies meanwhile 503.
        With `sid` (a frame), a live worker that is slow to answer is asked to adopt the session, in case
        it restarted under the same id and no longer holds it."""
        deadline = time.monotonic() + timeout
        while True:
            got = await self.b.wait_reply(req, min(2.0, max(0.1, deadline - time.monotonic())))
            if got is not None:
                break
            if time.monotonic() >= deadline:
                raise ApiError(504, "worker_timeout", f"worker {wid} did not answer within {timeout:.0f} s")
            if not await self.b.worker_alive(wid):
                raise ApiError(503, "worker_lost", f"worker {wid} stopped while handling the request; retry",
                               headers={"Retry-After": "1"})
            if sid:
                await self.adopt(sid, wid)
        out = json.loads(got[0])
        if out.get("type") == "error":
            raise ApiError(out["status"], out["code"], out["detail"])
        return out

    async def frame_rpc(self, sid: str, meta: dict[str, str], fmt: str, image: bytes) -> dict:
        """A frame over REST: into the session's frames stream like a WebSocket frame (so it is in the
        replay log), answered on a reply list. If the worker dies meanwhile, the frame stays in the stream
        and the session's new worker answers it after its replay."""
        wid = await self.owner(sid, meta)
        req = uuid.uuid4().hex
        h, body = pack({"op": "frame", "fmt": fmt, "req": req}, image)
        if await self.b.submit_frame(sid, h, body, self.s.session_ttl_s) is None:
            raise ApiError(404, "unknown_session", f"unknown session {sid} (deleted or expired)")
        for attempt in range(2):
            try:
                return await self.wait_answer(req, wid, self.s.request_timeout_s, sid)
            except ApiError as e:
                if e.code != "worker_lost" or attempt:
                    raise
                wid = await self.owner(sid, await self.b.get_session(sid) or meta)
        raise AssertionError("unreachable")

    async def session_rpc(self, sid: str, meta: dict[str, str], header: dict[str, Any],
                          *blobs: bytes) -> dict:
        """rpc to the session's owner, moving the session once if the owner died meanwhile."""
        header = {**header, "sid": sid}
        for attempt in range(2):
            wid = await self.owner(sid, meta)
            try:
                return await self.rpc(wid, header, *blobs)
            except ApiError as e:
                if e.code != "worker_lost" or attempt:
                    raise
                meta = await self.b.get_session(sid) or meta
        raise AssertionError("unreachable")

    def ws_url(self, request: Request, sid: str, token: str) -> str:
        base = self.s.public_url.rstrip("/") if self.s.public_url else str(request.base_url).rstrip("/")
        base = "ws" + base[4:] if base.startswith("http") else base
        return f"{base}/v1/sessions/{sid}/stream?token={token}"

    def jobs_dir(self) -> Path:
        d = Path(self.s.results_dir) / "jobs"
        d.mkdir(parents=True, exist_ok=True)
        return d


async def read_upload(f: UploadFile | None, limit: int, what: str) -> bytes | None:
    """Read an uploaded part, refusing more than `limit` bytes with 413."""
    if f is None:
        return None
    data = await f.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "upload_too_large",
                       f"{what} is larger than LWL_MAX_UPLOAD_MB={limit / 2**20:g} MB")
    return data


def _token(authorization: str | None, x_session_token: str | None, token: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return x_session_token or token


def session_info(meta: dict[str, str], ttl: float) -> SessionInfo:
    return SessionInfo(
        session_id=meta["id"], state=meta.get("state", ""), worker_id=meta.get("worker", ""),
        objects=json.loads(meta.get("objects", "[]")), frames=int(meta.get("frames", "0")),
        created=float(meta.get("created", "0")), last_active=float(meta.get("last_active", "0")),
        ttl_s=ttl, crop_size=meta.get("crop_size", ""), model=meta.get("model", ""),
    )


def create_app(settings: Settings, backend: RedisBackend | MemoryBackend, worker: Any = None) -> FastAPI:
    """The FastAPI app. With `worker` (lwl serve) the in-process worker starts and stops with the app."""
    svc = Service(settings, backend)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI lifespan protocol
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

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
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
                            503, headers={"Retry-After": str(max(1, int(settings.heartbeat_s * 2)))})

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

    Tok = dict(authorization=Header(None, include_in_schema=True), x_session_token=Header(None),
               token=Query(None, description="session token (alternative to the headers)"))

    # ---------------------------------------------------------------- health
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorBody}})
    async def readyz() -> JSONResponse:
        """Readiness: the store answers and at least one worker is live."""
        if not await backend.ping():
            return JSONResponse({"code": "store_down", "detail": "store (Redis) does not answer"}, 503)
        workers = await backend.live_workers()
        if not workers:
            return JSONResponse({"code": "no_worker", "detail": "no live worker"}, 503)
        return JSONResponse({"status": "ready", "workers": len(workers)})

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text"}})
    async def metrics() -> Response:
        """Prometheus metrics."""
        for k, v in (await svc.job_counts()).items():
            obs.JOBS.labels(k).set(v)
        if worker is None:
            obs.ACTIVE_SESSIONS.set(len(await backend.session_ids()))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/info", tags=["ops"], response_model=ServiceInfo)
    async def info() -> dict[str, Any]:
        """What a client needs before it starts: the models live workers serve (and whether boxes can
        start objects), this deployment's limits, and the palette of the label PNGs."""
        models: dict[str, dict[str, Any]] = {}
        for w in await backend.live_workers():
            m = models.setdefault(w.get("model", ""), {"name": w.get("model", ""), "workers": 0, "free": 0,
                                                      "box_init": bool(w.get("box_init")),
                                                      "crop_size": w.get("crop_size", ""), "threads": 0})
            m["workers"] += 1
            m["threads"] = max(m["threads"], int(w.get("threads") or 0))
            m["free"] += int(w.get("free", 0))
        return {"version": __version__, "models": list(models.values()),
                "limits": {"max_upload_bytes": settings.max_upload_bytes,
                           "max_frame_pixels": settings.max_frame_pixels,
                           "max_inflight_frames": settings.max_inflight_frames,
                           "session_ttl_s": settings.session_ttl_s},
                "palette": PALETTE, "api_key_required": bool(settings.api_key_hashes)}

    @app.get("/v1/workers", tags=["ops"])
    async def workers() -> list[dict[str, Any]]:
        """Live workers and their last heartbeat (capacity, memory, model)."""
        return await backend.live_workers()

    # ---------------------------------------------------------------- sessions
    @app.post("/v1/sessions", tags=["sessions"], status_code=201, response_model=SessionCreated,
              responses=ERRORS)
    async def create_session(
        request: Request,
        image: Annotated[UploadFile, File(description="initial frame, JPEG or PNG")],
        mask: Annotated[UploadFile | None, File(description="indexed PNG label map (0 = background)")] = None,
        boxes: Annotated[str | None, Form(description='JSON {"1": [x, y, w, h]}')] = None,
        crop_size: Annotated[str | None, Form(description="e.g. 240x432; default: model's")] = None,
        model: Annotated[str | None, Form(description="model name (must match a worker's model)")] = None,
        format: Annotated[str, Form(description="mask format of results: png or rle")] = "png",  # noqa: A002
    ) -> dict[str, Any]:
        """Create a session from an initial frame and a mask or boxes per object."""
        limit = settings.max_upload_bytes
        img = await read_upload(image, limit, "image")
        mdata = await read_upload(mask, limit, "mask")
        if mask is not None and not mdata:
            raise ApiError(400, "bad_mask", "mask file is empty")
        check_format(format)
        try:
            parse_crop(crop_size)
        except ValueError as exc:
            raise ApiError(400, "bad_crop_size", str(exc)) from None
        hw = check_image(img or b"", settings.max_frame_pixels)
        bx = parse_boxes(boxes)
        check_objects(hw, mdata, bx, settings.max_frame_pixels, settings.max_objects)
        sid = uuid.uuid4().hex
        token = secrets.token_urlsafe(24)
        key_name = getattr(request.state, "api_key", None) or ""  # LWL_API_KEYS: who creates it
        await svc.admit(request, "sessions", sid, settings.max_sessions_per_key)
        now = f"{time.time():.3f}"
        header = {"op": "create", "sid": sid, "crop_size": crop_size or "", "model": model or "",
                  "fmt": format, "boxes": {str(k): v for k, v in (bx or {}).items()}}
        tried: set[str] = set()
        while True:
            cands = [w for w in await svc.candidates(model) if w["id"] not in tried]
            if not cands:
                live = await backend.live_workers()
                if model and not tried and live and all(w.get("model") != model for w in live):
                    raise ApiError(400, "unknown_model", f"no live worker serves model {model!r}")
                raise svc.no_capacity()
            wid = cands[0]["id"]
            tried.add(wid)
            await backend.put_session(sid, {
                "id": sid, "token_sha256": _hash(token), "worker": wid, "state": "creating", "created": now,
                "last_active": now, "frames": "0", "objects": "[]", "crop_size": crop_size or "",
                "model": model or cands[0].get("model", ""), "format": format, "seq_next": "0",
                "ttl_s": str(settings.session_ttl_s), "height": str(hw[0]), "width": str(hw[1]),
                "api_key": key_name,
            }, settings.session_ttl_s)
            try:
                out = await svc.rpc(wid, header, img or b"", mdata or b"")
                break
            except ApiError as e:
                await backend.delete_session(sid)
                if e.code in ("worker_full", "worker_lost"):
                    continue
                raise
        log.info("session created", extra={"session_id": sid, "worker_id": wid})
        return {"session_id": sid, "token": token, "ws_url": svc.ws_url(request, sid, token),
                "worker_id": wid,
                "objects": out["objects"], "result": out}

    @app.get("/v1/sessions/{sid}", tags=["sessions"], response_model=SessionInfo, responses=ERRORS)
    async def get_session(sid: str, authorization: str | None = Tok["authorization"],
                          x_session_token: str | None = Tok["x_session_token"],
                          token: str | None = Tok["token"]) -> SessionInfo:
        """Session metadata."""
        meta = await svc.auth(sid, _token(authorization, x_session_token, token))
        return session_info(meta, settings.session_ttl_s)

    @app.delete("/v1/sessions/{sid}", tags=["sessions"], status_code=204, responses=ERRORS)
    async def delete_session(sid: str, authorization: str | None = Tok["authorization"],
                             x_session_token: str | None = Tok["x_session_token"],
                             token: str | None = Tok["token"]) -> Response:
        """Delete a session: the worker frees its tracker, the store forgets it."""
        meta = await svc.auth(sid, _token(authorization, x_session_token, token))
        live = {w["id"] for w in await backend.live_workers()}
        if meta.get("worker") in live:
            with contextlib.suppress(ApiError):
                await svc.rpc(meta["worker"], {"op": "delete", "sid": sid}, timeout=30)
        await backend.delete_session(sid)
        await backend.drop_results(sid)
        if meta.get("api_key"):  # its key's count goes down now (service.access.admit)
            await backend.release_slot("sessions", meta["api_key"], sid)
        return Response(status_code=204)

    @app.post("/v1/sessions/{sid}/frames", tags=["sessions"], response_model=FrameResultOut, responses=ERRORS)
    async def segment_frame(sid: str, image: Annotated[UploadFile, File(description="next frame")],
                            format: Annotated[str | None, Form()] = None,  # noqa: A002
                            authorization: str | None = Tok["authorization"],
                            x_session_token: str | None = Tok["x_session_token"],
                            token: str | None = Tok["token"]) -> dict[str, Any]:
        """Segment the next frame of the session over plain HTTP."""
        meta = await svc.auth(sid, _token(authorization, x_session_token, token))
        fmt = check_format(format or meta.get("format", "png"))
        img = await read_upload(image, settings.max_upload_bytes, "image")
        check_image(img or b"", settings.max_frame_pixels)
        return await svc.frame_rpc(sid, meta, fmt, img or b"")

    @app.post("/v1/sessions/{sid}/objects", tags=["sessions"], response_model=FrameResultOut,
              responses=ERRORS)
    async def add_objects(sid: str, mask: Annotated[UploadFile | None, File()] = None,
                          boxes: Annotated[str | None, Form()] = None,
                          authorization: str | None = Tok["authorization"],
                          x_session_token: str | None = Tok["x_session_token"],
                          token: str | None = Tok["token"]) -> dict[str, Any]:
        """Add objects (mask with new ids, or boxes) on the session's current frame."""
        meta = await svc.auth(sid, _token(authorization, x_session_token, token))
        mdata = await read_upload(mask, settings.max_upload_bytes, "mask")
        bx = parse_boxes(boxes)
        if not mdata and not bx:
            raise ApiError(400, "no_objects", "give a mask with new object ids or boxes")
        hw = session_hw(meta)
        if hw is not None:  # sessions made by an older api lack the size: the worker checks then
            check_objects(hw, mdata or None, bx, settings.max_frame_pixels, settings.max_objects,
                          have=json.loads(meta.get("objects", "[]")))
        return await svc.session_rpc(sid, meta, {"op": "add", "fmt": meta.get("format", "png"),
                                                 "boxes": {str(k): v for k, v in (bx or {}).items()}},
                                     mdata or b"")

    @app.post("/v1/sessions/{sid}/corrections", tags=["sessions"], response_model=FrameResultOut,
              responses=ERRORS)
    async def correct(sid: str, mask: Annotated[UploadFile, File(description="corrected label map")],
                      authorization: str | None = Tok["authorization"],
                      x_session_token: str | None = Tok["x_session_token"],
                      token: str | None = Tok["token"]) -> dict[str, Any]:
        """Correct the masks of tracked objects on the current frame (they become permanent samples)."""
        meta = await svc.auth(sid, _token(authorization, x_session_token, token))
        mdata = await read_upload(mask, settings.max_upload_bytes, "mask")
        if not mdata:
            raise ApiError(400, "bad_mask", "mask file is empty")
        check_mask(mdata, session_hw(meta), settings.max_frame_pixels)
        return await svc.session_rpc(sid, meta, {"op": "correct", "fmt": meta.get("format", "png")}, mdata)

    @app.delete("/v1/sessions/{sid}/objects/{object_id}", tags=["sessions"], responses=ERRORS)
    async def remove_object(sid: str, object_id: int, authorization: str | None = Tok["authorization"],
                            x_session_token: str | None = Tok["x_session_token"],
                            token: str | None = Tok["token"]) -> dict[str, Any]:
        """Stop tracking one object."""
        meta = await svc.auth(sid, _token(authorization, x_session_token, token))
        if object_id not in json.loads(meta.get("objects", "[]")):
            raise ApiError(404, "unknown_object", f"object {object_id} is not tracked in session {sid}")
        return await svc.session_rpc(sid, meta, {"op": "remove", "object_id": object_id})

    # ---------------------------------------------------------------- video jobs
    @app.post("/v1/jobs", tags=["jobs"], status_code=202, response_model=JobCreated, responses=ERRORS)
    async def create_job(
        request: Request,
        video: Annotated[UploadFile, File(description="video file (any container/codec FFmpeg decodes)")],
        mask: Annotated[UploadFile | None, File(description="indexed PNG for init_frame")] = None,
        boxes: Annotated[str | None, Form(description='JSON {"1": [x, y, w, h]}')] = None,
        init_frame: Annotated[int, Form(ge=0, description="frame the mask/boxes belong to")] = 0,
        crop_size: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        """Submit a whole video: 202 and a job id; poll GET /v1/jobs/{id}."""
        await svc.check_job_room()
        try:
            parse_crop(crop_size)
        except ValueError as exc:
            raise ApiError(400, "bad_crop_size", str(exc)) from None
        jid = uuid.uuid4().hex
        d = svc.jobs_dir() / jid
        d.mkdir(parents=True)
        try:
            limit = settings.max_upload_bytes
            size = 0
            part = d / (jobfiles.UPLOAD_NAME + jobfiles.PART_SUFFIX)  # renamed when complete (service.jobs)
            with open(part, "wb") as f:
                while chunk := await video.read(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        mb = settings.max_upload_mb
                        raise ApiError(413, "upload_too_large",
                                       f"video is larger than LWL_MAX_UPLOAD_MB={mb:g} MB")
                    f.write(chunk)
            part.rename(d / jobfiles.UPLOAD_NAME)
            mdata = await read_upload(mask, limit, "mask")
            bx = parse_boxes(boxes)
            count, hw, fps = await asyncio.to_thread(_probe_video, d / "input.video")
            if hw[0] * hw[1] > settings.max_frame_pixels:
                raise ApiError(413, "frame_too_large", f"video frames are {hw[1]}x{hw[0]}, more than "
                               f"LWL_MAX_FRAME_PIXELS={settings.max_frame_pixels}")
            if init_frame >= count:
                raise ApiError(400, "bad_init_frame",
                               f"init_frame {init_frame} is beyond the video's {count} frames")
            check_objects(hw, mdata or None, bx, settings.max_frame_pixels, settings.max_objects)
            if mdata:
                (d / "mask.png").write_bytes(mdata)
            await svc.admit(request, "jobs", jid, settings.max_jobs_per_key)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        now = f"{time.time():.3f}"
        token = secrets.token_urlsafe(24)
        await backend.put_job(jid, {
            "id": jid, "state": "queued", "progress": "0", "frames_done": "0", "frames_total": str(count),
            "init_frame": str(init_frame), "boxes": json.dumps({str(k): v for k, v in (bx or {}).items()}),
            "crop_size": crop_size or "", "input": jobfiles.UPLOAD_NAME, "fps": f"{fps:.4f}", "created": now,
            "updated": now, "filename": video.filename or "", "token_sha256": _hash(token),
            "api_key": getattr(request.state, "api_key", None) or "",
        })
        await backend.submit_job(jid)
        log.info("job submitted", extra={"job_id": jid, "frames": count})
        return {"job_id": jid, "token": token, "state": "queued",
                "status_url": str(request.url_for("job_status", jid=jid))}

    @app.get("/v1/jobs/{jid}", tags=["jobs"], response_model=JobStatus, responses=ERRORS)
    async def job_status(request: Request, jid: str, authorization: str | None = Tok["authorization"],
                         x_session_token: str | None = Tok["x_session_token"],
                         token: str | None = Tok["token"]) -> JobStatus:
        """Job state and progress (0..1); result URLs once done (add the job token to fetch them)."""
        rec = await svc.auth_job(jid, _token(authorization, x_session_token, token))
        results = {}
        if rec["state"] == "done":
            base = str(request.url_for("job_result", jid=jid))
            results = {f: f"{base}?format={f}" for f in ("png", "rle", "mp4")}
        return JobStatus(job_id=jid, state=rec["state"], progress=float(rec.get("progress", 0)),
                         frames_done=int(rec.get("frames_done", 0)),
                         frames_total=int(rec.get("frames_total", 0)),
                         error=rec.get("error") or None, created=float(rec["created"]),
                         updated=float(rec.get("updated", rec["created"])), worker_id=rec.get("worker"),
                         threads=int(rec["threads"]) if rec.get("threads") else None, results=results)

    @app.get("/v1/jobs/{jid}/result", tags=["jobs"], responses={**ERRORS, 409: {"model": ErrorBody}})
    async def job_result(jid: str, format: str = Query("png", pattern="^(png|rle|mp4)$"),  # noqa: A002
                         authorization: str | None = Tok["authorization"],
                         x_session_token: str | None = Tok["x_session_token"],
                         token: str | None = Tok["token"]) -> FileResponse:
        """Download: png = zip of DAVIS-palette PNGs, rle = COCO RLE JSON, mp4 = overlay video. The job
        token alone authenticates it (no API key needed), so `?token=` makes a plain download link."""
        rec = await svc.auth_job(jid, _token(authorization, x_session_token, token))
        if rec["state"] != "done":
            raise ApiError(409, "job_not_done", f"job {jid} is {rec['state']}"
                           + (f": {rec['error']}" if rec.get("error") else ""))
        name, media = {"png": ("masks.zip", "application/zip"), "rle": ("rle.json", "application/json"),
                       "mp4": ("overlay.mp4", "video/mp4")}[format]
        path = svc.jobs_dir() / jid / name
        if not path.exists():
            raise ApiError(404, "result_missing", f"result file {name} of job {jid} is missing on the volume")
        return FileResponse(path, media_type=media, filename=f"{jid}-{name}")

    @app.delete("/v1/jobs/{jid}", tags=["jobs"], status_code=204, responses=ERRORS)
    async def delete_job(jid: str, authorization: str | None = Tok["authorization"],
                         x_session_token: str | None = Tok["x_session_token"],
                         token: str | None = Tok["token"]) -> Response:
        """Delete a job: its record, input and results. A running job is cancelled: its worker stops within
        a few frames (its next progress update finds the record gone) and writes no results."""
        rec = await svc.auth_job(jid, _token(authorization, x_session_token, token))
        await backend.delete_job(jid)
        if rec.get("api_key"):
            await backend.release_slot("jobs", rec["api_key"], jid)
        await asyncio.to_thread(jobfiles.remove_job_files, svc.jobs_dir() / jid)
        log.info("job deleted", extra={"job_id": jid, "state": rec.get("state")})
        return Response(status_code=204)

    # ---------------------------------------------------------------- WebSocket
    @app.websocket("/v1/sessions/{sid}/stream")
    async def stream(ws: WebSocket, sid: str, token: str | None = None, format: str | None = None,  # noqa: A002
                     mode: str = "all", max_inflight: str | None = None, resume_from: str | None = None) -> None:
        # numbers arrive as text and are checked by the handler, so a bad one gets close code 4400
        await StreamHandler(svc, ws, sid).run(token, format, mode, max_inflight, resume_from)

    if settings.web_ui:
        mount_web(app, settings.web_frame_ancestors)
    return app


def _probe_video(path: Path) -> tuple[int, tuple[int, int], float]:
    """Decode the whole upload once (model.media.probe_video): frame count, frame size, fps; 400 if
    undecodable."""
    from model.media import probe_video

    try:
        info = probe_video(path, count=True)
    except InputError as exc:
        raise ApiError(400, "bad_video", jobfiles.scrub_paths(str(exc), path)) from None
    return info.frames or 0, (info.height, info.width), info.fps


# ============================================================================ WebSocket relay

WS_CLOSE = {"bad_message": 4400, "missing_token": 4401, "wrong_token": 4403, "unknown_session": 4404,
            "stream_replaced": 4409, "session_ended": 4410, "no_worker": 4503, "internal": 1011,
            "store_down": 1013}
MAX_ID_CHARS = 128  # a client's frame id is echoed in its answer and kept with the frame: keep it small
READ_AHEAD, READ_AHEAD_BYTES = 256, 32 << 20  # frames a stream reads ahead of the worker at most, and bytes


def _count(text: str | None, name: str, low: int) -> int | None:
    """A whole-number option of the stream URL or auth message (None when absent)."""
    if text is None or text == "":
        return None
    if isinstance(text, bool) or not str(text).isdigit() or int(text) < low:
        raise ApiError(400, "bad_option", f"{name} must be a whole number >= {low}, not {str(text)[:20]!r}")
    return int(text)


def _client_id(env: dict[str, Any]) -> Any:
    """The `id` of a frame envelope: a string (at most 128 characters), a number or absent."""
    cid = env.get("id")
    if cid is None or (isinstance(cid, (int, float)) and not isinstance(cid, bool)) or (
            isinstance(cid, str) and len(cid) <= MAX_ID_CHARS):
        return cid
    raise ValueError(f"id must be a string of at most {MAX_ID_CHARS} characters or a number")


class StreamHandler:
    """One WebSocket stream: frames in, results out, in order, with bounded frames in flight."""

    def __init__(self, svc: Service, ws: WebSocket, sid: str) -> None:
        self.svc, self.ws, self.sid = svc, ws, sid
        self.inflight: OrderedDict[int, tuple[float, Any]] = OrderedDict()  # seq -> (receipt time, client id)
        self.waiting: tuple[float, Any, bytes] | None = None  # latest mode: newest unsent frame
        self.owner = ""  # the session's worker: looked up at the start, again only when answers stop
        self.slot = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.closed = False
        self.claim = uuid.uuid4().hex  # this stream's claim on the session (one stream per session)
        self.backlog: deque[tuple[float, Any, bytes]] = deque()  # mode all: frames read ahead, not yet sent
        self.backlog_bytes = 0
        self.pump_lock = asyncio.Lock()

    async def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason[:120])

    async def send(self, msg: dict[str, Any]) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(msg))

    async def run(self, token: str | None, fmt: str | None, mode: str, max_inflight: str | None,
                  resume_from: str | None = None) -> None:
        s = self.svc.s
        await self.ws.accept()
        try:
            if not token:  # browsers: token as the first message
                first = await self._auth_message()
                token, resume_from = first.get("token"), first.get("resume_from", resume_from)
            try:
                meta = await self.svc.auth(self.sid, token)
                self.fmt = fmt or meta.get("format", "png")
                if self.fmt not in ("png", "rle") or mode not in ("all", "latest"):
                    raise ApiError(400, "bad_option", "format must be png or rle, mode all or latest")
                inflight = _count(max_inflight, "max_inflight", 1)
                resume = _count(None if resume_from is None else str(resume_from), "resume_from", 1)
            except ApiError as e:
                with contextlib.suppress(Exception):
                    await self.send({"type": "error", "code": e.code, "detail": e.detail})
                return await self.close(WS_CLOSE.get(e.code, 4400), e.detail)
            self.mode = mode
            self.limit = max(1, min(inflight or s.max_inflight_frames, s.max_inflight_frames))
            try:
                self.owner = await self.svc.owner(self.sid, meta)
            except ApiError as e:
                await self.send({"type": "error", "code": e.code, "detail": e.detail})
                return await self.close(4503, e.detail)
            # One stream per session: this one claims it; an older stream's next frame is refused (4409).
            await self.svc.b.update_session(self.sid, {"stream": self.claim})
            meta = await self.svc.b.get_session(self.sid) or meta
            ready = {"type": "ready", "session_id": self.sid, "format": self.fmt, "mode": self.mode,
                     "max_inflight": self.limit, "frames": int(meta.get("frames", "0")),
                     "objects": json.loads(meta.get("objects", "[]")),
                     "next_seq": int(meta.get("seq_next", "0")) + 1}
            if resume is None:
                last = await self.svc.b.last_result(self.sid)
                self.last_id = last[0] if last else "0"
            else:
                ready.update(await self._resume(resume, ready["next_seq"]))
            await self.send(ready)
            recv = asyncio.create_task(self._receive())
            relay = asyncio.create_task(self._relay())
            done, pending = await asyncio.wait({recv, relay}, return_when=asyncio.FIRST_COMPLETED)
            if recv in done and not recv.exception():
                # client said "close": finish what is in flight first
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._drained(), s.request_timeout_s)
            for t in pending:
                t.cancel()
            for t in done | pending:
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
                    exc = t.exception() if t.done() and not t.cancelled() else None
                    if isinstance(exc, _Close):
                        await self.close(exc.code, exc.reason)
                    elif isinstance(exc, STORE_ERRORS):
                        await self._store_down(exc)
            await self.close(1000, "done")
        except WebSocketDisconnect:
            self.closed = True
        except STORE_ERRORS as exc:
            await self._store_down(exc)
        except Exception:  # noqa: BLE001
            log.exception("stream failed", extra={"session_id": self.sid})
            await self.close(1011, "internal error")

    async def _auth_message(self) -> dict[str, Any]:
        """The first message when the URL has no token: {"type": "auth", "token": ..., "resume_from": ...}."""
        try:
            first = json.loads(await asyncio.wait_for(self.ws.receive_text(), 10))
        except (asyncio.TimeoutError, ValueError, KeyError, WebSocketDisconnect, RuntimeError):
            return {}
        return first if isinstance(first, dict) else {}

    async def _resume(self, first: int, next_seq: int) -> dict[str, Any]:
        """A client back after a dropped connection: the frames it sent from seq `first` on that the session
        accepted are answered (again) on this stream, in order, with their ids; none is applied twice. The
        client resends only frames the session never accepted (seq >= next_seq, or ids not listed)."""
        known: dict[int, Any] = {}
        for r in await self.svc.b.read_results(self.sid, "0", 0.001):
            if r.seq >= first:
                known[r.seq] = json.loads(r.body).get("id")
        rest: set[int] = set()  # frames sent over REST: answered to their request, not on a stream
        for _eid, hraw, _body in await self.svc.b.read_frames(self.sid, "0"):
            h = json.loads(hraw)
            if int(h.get("seq", 0)) >= first:
                if "req" in h:
                    rest.add(int(h["seq"]))
                else:
                    known.setdefault(int(h["seq"]), h.get("id"))
        t0 = time.perf_counter()
        for seq in sorted(known):
            self.inflight[seq] = (t0, None)
        self.last_id = "0"  # read the results stream from its start: answers already written go out again
        lost = [q for q in range(first, next_seq) if q not in known and q not in rest]
        return {"resumed": [{"seq": q, "id": known[q]} for q in sorted(known)], "lost": lost}

    async def _store_down(self, exc: BaseException) -> None:
        """Redis unavailable: an `error` message, then close 1013 (try again later). Frames already in
        the session's stream are answered once the store is back; a reconnecting client resumes."""
        obs.ERRORS.labels("store_down").inc()
        log.warning("store unavailable", extra={"session_id": self.sid, "error": f"{type(exc).__name__}: {exc}"})
        await self.svc.b.reset_idle()
        with contextlib.suppress(Exception):
            await self.send({"type": "error", "code": "store_down",
                             "detail": "the store (Redis) is unavailable; reconnect shortly"})
        await self.close(WS_CLOSE["store_down"], "store unavailable, retry")

    async def _drained(self) -> None:
        while self.inflight or self.waiting or self.backlog:
            self.slot.clear()
            await self.slot.wait()

    async def _receive(self) -> None:
        """Read client messages; bounded in-flight frames (all: queue a bounded read-ahead, then wait;
        latest: keep only the newest). Reading ahead keeps the socket moving, so a sender that does not wait
        for answers still gets its keepalive pings answered; past READ_AHEAD the socket waits (TCP
        backpressure)."""
        s = self.svc.s
        while True:
            if self.mode == "all":
                while self.backlog and (self.backlog_bytes >= READ_AHEAD_BYTES or len(self.backlog) >= READ_AHEAD):
                    self.slot.clear()
                    await self.slot.wait()
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", 1000))
            client_id: Any = None
            if msg.get("bytes") is not None:
                data = msg["bytes"]
            else:
                try:
                    env = json.loads(msg.get("text") or "")
                    if not isinstance(env, dict):
                        raise ValueError("not an object")
                except ValueError:
                    await self.send({"type": "error", "code": "bad_message",
                                     "detail": "text messages must be JSON objects"})
                    continue
                kind = env.get("type")
                if kind == "close":
                    return
                if kind == "ping":
                    await self.send({"type": "pong"})
                    continue
                if kind == "auth":
                    continue
                if kind != "frame" or not isinstance(env.get("image"), str):
                    await self.send({"type": "error", "code": "bad_message", "detail": 'expected {"type": '
                                     '"frame", "image": "<base64 JPEG/PNG>"}, {"type": "close"} or binary'})
                    continue
                try:
                    client_id = _client_id(env)
                except ValueError as exc:
                    await self.send({"type": "error", "code": "bad_message", "detail": str(exc)})
                    continue
                try:
                    data = base64.b64decode(env["image"], validate=True)
                except ValueError:
                    await self.send({"type": "error", "code": "bad_image", "id": client_id,
                                     "detail": "image is not valid base64"})
                    continue
            t0 = time.perf_counter()
            try:
                if len(data) > s.max_upload_bytes:
                    raise ApiError(413, "upload_too_large", "frame larger than LWL_MAX_UPLOAD_MB")
                check_image(data, s.max_frame_pixels, "frame")
            except ApiError as e:
                obs.ERRORS.labels(e.code).inc()
                await self.send({"type": "error", "status": e.status, "code": e.code, "detail": e.detail,
                                 "id": client_id})
                continue
            if self.mode == "latest" and len(self.inflight) >= self.limit:
                if self.waiting is not None:
                    await self.send({"type": "skipped", "id": self.waiting[1]})
                self.waiting = (t0, client_id, data)
                continue
            self.backlog.append((t0, client_id, data))
            self.backlog_bytes += len(data)
            await self._pump()

    async def _pump(self) -> None:
        """Frames read ahead go to the session, in order, while fewer than max_inflight are at the worker.
        One pump at a time: the receiver and the relay both call it, and seqs must follow the order read."""
        async with self.pump_lock:
            while self.backlog and len(self.inflight) < self.limit:
                t0, client_id, data = self.backlog.popleft()
                self.backlog_bytes -= len(data)
                await self._submit(t0, client_id, data)

    async def _submit(self, t0: float, client_id: Any, data: bytes) -> None:
        """One round trip: the frame goes into the session's frames stream, numbered by the next seq.
        No worker lookup: the owner reads that stream (and it is the replay log if the owner dies)."""
        head: dict[str, Any] = {"op": "frame", "fmt": self.fmt}
        if client_id is not None:  # the worker echoes it: a resumed stream still knows which frame it was
            head["id"] = client_id
        h, body = pack(head, data)
        seq = await self.svc.b.submit_frame(self.sid, h, body, self.svc.s.session_ttl_s, self.claim)
        if seq is None:
            raise _Close(4410, "session ended (deleted or expired)")
        if seq < 0:
            raise _Close(4409, "another stream took over this session")
        self.inflight[seq] = (t0, client_id)

    async def _relay(self) -> None:
        """Forward this stream's results in order, as the worker wrote them; when answers stop coming,
        check the session and its worker (and move the session if the worker died)."""
        quiet_since = time.monotonic()
        while True:
            msgs = await self.svc.b.read_results(self.sid, self.last_id, 1.0)
            for r in msgs:
                self.last_id = r.eid
                if r.seq in self.inflight:
                    await self._forward(r)
            if msgs:
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - quiet_since >= 1.0:
                quiet_since = time.monotonic()
                await self._check_owner()

    async def _forward(self, r: Result) -> None:
        """Send one answer: the worker's JSON text plus the client's id and the latency (spliced in)."""
        t0, _ = self.inflight.pop(r.seq)
        extra: dict[str, Any] = {}  # the client's id is in the worker's text already
        if r.kind == "result":
            dt = time.perf_counter() - t0
            obs.LATENCY.labels("end_to_end").observe(dt)
            extra["latency_ms"] = round(dt * 1000, 3)
        async with self.send_lock:
            await self.ws.send_text(splice(r.body, extra).decode())
        if self.waiting is not None and len(self.inflight) < self.limit:
            w, self.waiting = self.waiting, None
            await self._submit(*w)
        await self._pump()
        self.slot.set()

    async def _check_owner(self) -> None:
        """After a quiet second: the session must still exist; with frames in flight, a dead worker's
        session moves (the new worker replays the frames stream), a live one is asked to adopt it (a
        no-op unless it restarted under the same id and lost it)."""
        meta = await self.svc.b.get_session(self.sid)
        if meta is None:
            raise _Close(4410, "session ended (deleted or expired)")
        if not self.inflight:
            return
        self.owner = meta.get("worker", "")
        if await self.svc.b.worker_alive(self.owner):
            await self.svc.adopt(self.sid, self.owner)
            return
        try:
            self.owner = await self.svc.move(self.sid, self.owner)
        except ApiError as e:
            raise _Close(4503, e.detail) from None


class _Close(Exception):
    """Ends a stream with a WebSocket close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason
