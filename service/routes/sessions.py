"""Sessions over REST (create, read, delete; frames, objects, corrections) and the route of the
WebSocket stream (service.stream). Inputs are checked here without model code (service.checks); the
work is a call to the session's worker (service.placement)."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile, WebSocket
from fastapi.responses import Response

from service.checks import (
    boxes_header,
    check_crop,
    check_format,
    check_image,
    check_mask,
    check_objects,
    check_size,
    check_state,
    check_tracked,
    model_name,
    parse_boxes,
    read_upload,
    session_hw,
    token_digest,
)
from service.codec import parse_frame_bytes
from service.deps import BoxesForm, Svc, Token
from service.errors import ERRORS, ServiceError
from service.schemas import FrameResultOut, SessionCreated, SessionInfo
from service.stream import StreamHandler

router = APIRouter(tags=["sessions"])
log = logging.getLogger("lwl.api")


@router.post("/v1/sessions", status_code=201, response_model=SessionCreated, responses=ERRORS)
async def create_session(
    request: Request,
    svc: Svc,
    image: Annotated[UploadFile | None, File(description="initial frame, JPEG or PNG")] = None,
    mask: Annotated[UploadFile | None, File(description="indexed PNG label map (0 = background)")] = None,
    boxes: BoxesForm = None,
    crop_size: Annotated[str | None, Form(description="e.g. 240x432; default: model's")] = None,
    model: Annotated[str | None, Form(description="model name (must match a worker's model)")] = None,
    profile: Annotated[str | None, Form(description="bundled model profile: fast (the default) or accurate; "
                                        "the same as naming it in `model`")] = None,
    format: Annotated[str, Form(description="mask format of results: png or rle")] = "png",  # noqa: A002
    state: Annotated[UploadFile | None, File(description="a saved session (GET /v1/sessions/{id}/state) "
                                                         "instead of image and mask or boxes")] = None,
) -> dict[str, Any]:
    """Create a session from an initial frame and a mask or boxes per object, or from a saved state."""
    s = svc.s
    check_format(format)
    model = model_name(profile, model)
    if state is not None:
        if image is not None or mask is not None or boxes or crop_size:
            raise ServiceError(400, "bad_state", "give a state alone, or an image with a mask or boxes")
        return await _create_from_state(request, svc, state, model, format)
    if image is None:
        raise ServiceError(400, "bad_image", "give an image (with a mask or boxes) or a saved state")
    img = await read_upload(image, s.max_upload_bytes, "image")
    mdata = await read_upload(mask, s.max_upload_bytes, "mask")
    if mask is not None and not mdata:
        raise ServiceError(400, "bad_mask", "mask file is empty")
    check_crop(crop_size)
    hw = check_image(img or b"", s.max_frame_pixels)
    bx = parse_boxes(boxes)
    check_objects(hw, mdata, bx, s.max_frame_pixels, s.max_objects)
    sid = uuid.uuid4().hex
    await svc.admit(request, "sessions", sid)
    record, token = _record(request, svc, sid, hw, crop_size or "", format)
    header = {"op": "create", "sid": sid, "crop_size": crop_size or "", "model": model or "", "fmt": format,
              "boxes": boxes_header(bx)}
    wid, out = await svc.place.place(sid, record, model, header, img or b"", mdata or b"")
    log.info("session created", extra={"session_id": sid, "worker_id": wid})
    return _created(request, svc, sid, token, wid, out)


def _record(request: Request, svc: Any, sid: str, hw: tuple[int, int] | list[int], crop: str, fmt: str,
            objects: list[int] | None = None, frames: int = 0) -> tuple[dict[str, str], str]:
    """A new session's record in the store and its token (the record keeps a digest of it only)."""
    token, now = secrets.token_urlsafe(24), f"{time.time():.3f}"
    return {"id": sid, "token_sha256": token_digest(token), "state": "creating", "created": now,
            "last_active": now, "frames": str(frames), "objects": json.dumps(objects or []), "crop_size": crop,
            "format": fmt, "seq_next": "0", "ttl_s": str(svc.s.session_ttl_s),
            "height": str(hw[0]), "width": str(hw[1]),
            "api_key": getattr(request.state, "api_key", None) or ""}, token  # LWL_API_KEYS: who creates it


def _created(request: Request, svc: Any, sid: str, token: str, wid: str, out: dict[str, Any]) -> dict[str, Any]:
    return {"session_id": sid, "token": token, "ws_url": svc.ws_url(request, sid, token), "worker_id": wid,
            "objects": out["objects"], "result": out}


async def _create_from_state(request: Request, svc: Any, state: UploadFile, model: str | None,
                             fmt: str) -> dict[str, Any]:
    """A session from a saved tracker state: read within the session state limit, its header checked
    (service.checks.check_state), placed on a worker of the model and weights that made it, which
    restores it (and checks the rest)."""
    s = svc.s
    blob = await read_upload(state, s.max_session_state_bytes, "state", "LWL_MAX_SESSION_STATE_MB",
                             "state_too_large") or b""
    head = check_state(blob, s.max_frame_pixels, s.max_objects)
    if model and model != head["model"]:
        raise ServiceError(400, "bad_state", f"the state is of model {head['model']!r}, not {model!r}")
    sid = uuid.uuid4().hex
    await svc.admit(request, "sessions", sid)
    crop = "x".join(map(str, head["crop_hw"]))
    record, token = _record(request, svc, sid, head["frame_hw"], crop, fmt, head["objects"], head["frame_index"] + 1)
    header = {"op": "restore", "sid": sid, "fmt": fmt}
    wid, out = await svc.place.place(sid, record, head["model"], header, blob, weights=head["weights"])
    log.info("session created from a saved state", extra={"session_id": sid, "worker_id": wid})
    return _created(request, svc, sid, token, wid, out)


@router.get("/v1/sessions/{sid}", response_model=SessionInfo, responses=ERRORS)
async def get_session(sid: str, svc: Svc, token: Token) -> SessionInfo:
    """Session metadata."""
    meta = await svc.session(sid, token)
    return SessionInfo(
        session_id=meta["id"], state=meta.get("state", ""), worker_id=meta.get("worker", ""),
        objects=json.loads(meta.get("objects", "[]")), frames=int(meta.get("frames", "0")),
        created=float(meta.get("created", "0")), last_active=float(meta.get("last_active", "0")),
        ttl_s=svc.s.session_ttl_s, crop_size=meta.get("crop_size", ""), model=meta.get("model", ""),
    )


@router.get("/v1/sessions/{sid}/state", responses={**ERRORS, 200: {
    "content": {"application/octet-stream": {}},
    "description": "the tracker state (Tracker.export_state bytes): POST it to /v1/sessions as `state`, or "
                   "restore it in the library with model.restore_tracker(bytes)"}})
async def get_state(sid: str, svc: Svc, token: Token) -> Response:
    """Save a session: its tracker state after the frames and edits sent before this call."""
    meta = await svc.session(sid, token)
    await svc.place.session_rpc(sid, meta, {"op": "state"})
    snap = await svc.b.get_snapshot(sid)
    if snap is None:
        raise ServiceError(404, "unknown_session", f"unknown session {sid} (deleted or expired)")
    blob = parse_frame_bytes(snap)[1][0]
    check_size(len(blob), svc.s.max_session_state_bytes, "the session's state", "LWL_MAX_SESSION_STATE_MB",
               "state_too_large")
    return Response(blob, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{sid}.lwlstate"'})


@router.delete("/v1/sessions/{sid}", status_code=204, responses=ERRORS)
async def delete_session(sid: str, svc: Svc, token: Token) -> Response:
    """Delete a session: the worker frees its tracker, the store forgets it."""
    meta = await svc.session(sid, token)
    live = {w["id"] for w in await svc.b.live_workers()}
    if meta.get("worker") in live:
        with contextlib.suppress(ServiceError):
            await svc.place.rpc(meta["worker"], {"op": "delete", "sid": sid}, timeout=30)
    await svc.b.delete_session(sid)
    await svc.b.drop_results(sid)
    if meta.get("api_key"):  # its key's count goes down now (service.access.admit)
        await svc.b.release_slot("sessions", meta["api_key"], sid)
    return Response(status_code=204)


@router.post("/v1/sessions/{sid}/frames", response_model=FrameResultOut, responses=ERRORS)
async def segment_frame(sid: str, svc: Svc, token: Token, image: Annotated[UploadFile, File(description="next frame")],
                        format: Annotated[str | None, Form()] = None) -> dict[str, Any]:  # noqa: A002
    """Segment the next frame of the session over plain HTTP."""
    meta = await svc.session(sid, token)
    fmt = check_format(format or meta.get("format", "png"))
    img = await read_upload(image, svc.s.max_upload_bytes, "image")
    check_image(img or b"", svc.s.max_frame_pixels)
    return await svc.place.frame_rpc(sid, meta, fmt, img or b"")


@router.post("/v1/sessions/{sid}/objects", response_model=FrameResultOut, responses=ERRORS)
async def add_objects(sid: str, svc: Svc, token: Token, mask: Annotated[UploadFile | None, File()] = None,
                      boxes: Annotated[str | None, Form()] = None) -> dict[str, Any]:
    """Add objects (mask with new ids, or boxes) on the session's current frame."""
    meta = await svc.session(sid, token)
    mdata = await read_upload(mask, svc.s.max_upload_bytes, "mask")
    bx = parse_boxes(boxes)
    if not mdata and not bx:
        raise ServiceError(400, "no_objects", "give a mask with new object ids or boxes")
    hw = session_hw(meta)
    if hw is not None:  # sessions made by an older api lack the size: the worker checks then
        check_objects(hw, mdata or None, bx, svc.s.max_frame_pixels, svc.s.max_objects,
                      have=json.loads(meta.get("objects", "[]")))
    return await svc.place.session_rpc(sid, meta, {"op": "add", "fmt": meta.get("format", "png"),
                                                   "boxes": boxes_header(bx)}, mdata or b"")


@router.post("/v1/sessions/{sid}/corrections", response_model=FrameResultOut, responses=ERRORS)
async def correct(sid: str, svc: Svc, token: Token,
                  mask: Annotated[UploadFile, File(description="corrected label map")]) -> dict[str, Any]:
    """Correct the masks of tracked objects on the current frame (they become permanent samples)."""
    meta = await svc.session(sid, token)
    mdata = await read_upload(mask, svc.s.max_upload_bytes, "mask")
    if not mdata:
        raise ServiceError(400, "bad_mask", "mask file is empty")
    check_mask(mdata, session_hw(meta), svc.s.max_frame_pixels)
    return await svc.place.session_rpc(sid, meta, {"op": "correct", "fmt": meta.get("format", "png")}, mdata)


@router.delete("/v1/sessions/{sid}/objects/{object_id}", responses=ERRORS)
async def remove_object(sid: str, object_id: int, svc: Svc, token: Token) -> dict[str, Any]:
    """Stop tracking one object."""
    meta = await svc.session(sid, token)
    check_tracked(object_id, json.loads(meta.get("objects", "[]")), sid)
    return await svc.place.session_rpc(sid, meta, {"op": "remove", "object_id": object_id})


@router.websocket("/v1/sessions/{sid}/stream")
async def stream(ws: WebSocket, sid: str, svc: Svc, token: str | None = None, format: str | None = None,  # noqa: A002
                 mode: str = "all", max_inflight: str | None = None, resume_from: str | None = None) -> None:
    """The session's WebSocket stream (docs/API.md). Numbers arrive as text and are checked by the
    handler, so a bad one gets close code 4400."""
    await StreamHandler(svc, ws, sid).run(token, format, mode, max_inflight, resume_from)
