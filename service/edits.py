"""Edits inside a session's frames stream (a WebSocket stream's `correct`, `add`, `remove`): the worker
applies each in order with the frames around it, and a replay after failover applies it again at the
same place, so a resumed session reaches the same state. Each is answered like a frame (`corrected`,
`added`, `removed`, with the merged result). The checks are service.checks', run here against the
tracker itself: edits in flight change the objects after the api saw them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model.api import read_label_png
from model.errors import InputError
from service.checks import check_objects, check_tracked
from service.compute import error_message, result_of
from service.errors import ServiceError

if TYPE_CHECKING:
    from service.session_ops import HeldSession, SessionOps

EDIT_ANSWERS = {"correct": "corrected", "add": "added", "remove": "removed"}  # op -> its answer's type


def is_edit(header: dict[str, Any]) -> bool:
    """An entry of the frames stream that is an edit, not a frame."""
    return header.get("op") in EDIT_ANSWERS


def apply_edit(ops: SessionOps, sid: str, hs: HeldSession, eid: str, seq: int, h: dict[str, Any],
               blobs: list[bytes]) -> dict[str, Any]:
    """Compute thread: one edit on the session's tracker, answered with the merged result or its error.
    Counted as applied either way (like a frame), so a replay does the same."""
    try:
        out = _edit(ops, sid, hs.tracker, h, blobs[0] if blobs else b"")
        out["type"] = EDIT_ANSWERS[h["op"]]
    except Exception as e:  # noqa: BLE001 - this edit only; the session goes on
        out = error_message(e, sid, str(h.get("op")))
    hs.applied(seq, eid, sum(len(b) for b in blobs))
    return out


def _label_map(data: bytes) -> Any:
    try:
        return read_label_png(data)
    except InputError as exc:
        raise ServiceError(400, "bad_mask", str(exc)) from None


def _edit(ops: SessionOps, sid: str, tr: Any, h: dict[str, Any], data: bytes) -> dict[str, Any]:
    """The edit's tracker call (model.api), after the checks the REST route makes."""
    s, fmt = ops.w.s, h.get("fmt", "png")
    if tr.frame_hw is None:
        raise ServiceError(400, "bad_input", "the session has no frame yet")
    if h["op"] == "correct":
        mask = _label_map(data)
        return result_of(lambda: tr.correct(mask), fmt)
    if h["op"] == "add":
        boxes = {int(k): list(v) for k, v in (h.get("boxes") or {}).items()} or None
        new = check_objects(tr.frame_hw, data or None, boxes, s.max_frame_pixels, s.max_objects, have=tr.object_ids)
        ops.admit(tr.frame_hw, len(tr.object_ids) + len(new), tr.crop_hw, sid=sid)
        mask = _label_map(data) if data else None
        tboxes = {k: tuple(v) for k, v in boxes.items()} if boxes else None
        return result_of(lambda: tr.add_objects(mask=mask, boxes=tboxes), fmt)
    oid = int(h["object_id"])
    check_tracked(oid, tr.object_ids, sid)
    out = result_of(lambda: tr.remove_object(oid), fmt)
    out["object_id"] = oid
    return out
