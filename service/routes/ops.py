"""Operations: liveness, readiness, Prometheus metrics, what a client needs before it starts
(`/v1/info`), and the live workers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.lite import RESULT_FORMATS, palette
from service import __version__, obs
from service.deps import Svc
from service.schemas import ErrorBody, ServiceInfo

router = APIRouter(tags=["ops"])
PALETTE = palette()  # the colours of every label PNG, sent by GET /v1/info (computed once)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorBody}})
async def readyz(svc: Svc) -> JSONResponse:
    """Readiness: the store answers and at least one worker is live."""
    if not await svc.b.ping():
        return JSONResponse({"code": "store_down", "detail": "store (Redis) does not answer"}, 503)
    workers = await svc.b.live_workers()
    if not workers:
        return JSONResponse({"code": "no_worker", "detail": "no live worker"}, 503)
    return JSONResponse({"status": "ready", "workers": len(workers)})


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Prometheus text"}})
async def metrics(request: Request, svc: Svc) -> Response:
    """Prometheus metrics."""
    for k, v in (await svc.job_counts()).items():
        obs.JOBS.labels(k).set(v)
    if request.app.state.worker is None:  # lwl serve: the in-process worker sets it
        obs.ACTIVE_SESSIONS.set(len(await svc.b.session_ids()))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/info", response_model=ServiceInfo)
async def info(svc: Svc) -> dict[str, Any]:
    """What a client needs before it starts: the models live workers serve (and whether boxes can
    start objects), this deployment's limits, the palette of the label PNGs and the result formats of
    video jobs."""
    models: dict[str, dict[str, Any]] = {}
    for w in await svc.b.live_workers():
        served = w.get("models") or [{"name": w.get("model", ""), "box_init": bool(w.get("box_init")),
                                      "crop_size": w.get("crop_size", "")}]
        for k, sm in enumerate(served):
            m = models.setdefault(sm["name"], {"name": sm["name"], "workers": 0, "free": 0, "default": False,
                                               "box_init": bool(sm.get("box_init")),
                                               "crop_size": sm.get("crop_size", ""), "threads": 0})
            m["workers"] += 1
            m["default"] = m["default"] or k == 0  # a worker's first model is what a session gets unasked
            m["threads"] = max(m["threads"], int(w.get("threads") or 0))
            m["free"] += int(w.get("free", 0))
    s = svc.s
    return {"version": __version__, "models": list(models.values()),
            "limits": {"max_upload_bytes": s.max_upload_bytes, "max_frame_pixels": s.max_frame_pixels,
                       "max_inflight_frames": s.max_inflight_frames, "session_ttl_s": s.session_ttl_s},
            "palette": PALETTE, "api_key_required": bool(s.api_key_hashes),
            "result_formats": [f.public() for f in RESULT_FORMATS.values()]}


@router.get("/v1/workers")
async def workers(svc: Svc) -> list[dict[str, Any]]:
    """Live workers and their last heartbeat (capacity, memory, model)."""
    return await svc.b.live_workers()
