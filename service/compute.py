"""What the worker runs around a model call, on its compute thread or a lane: the frame's only full
decode, the timed model call, the result message, and the error message a failure becomes. Shared by
the frame path (service.worker), session ops (service.session_ops) and nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from model.api import encode_label_png, read_image
from model.errors import InputError
from service import obs
from service.backends import STORE_ERRORS
from service.codec import b64, binary_png, rle_encode
from service.errors import ServiceError

log = logging.getLogger("lwl.worker")
T = TypeVar("T")


def decode_frame(image: bytes, max_pixels: int) -> np.ndarray:
    """The only full decode of a frame (the api reads its header only); the pixel limit again, because a
    header can lie about the size."""
    t = time.perf_counter()
    try:
        frame = read_image(image)
    except InputError as e:
        raise ServiceError(400, "bad_image", str(e)) from None
    if frame.shape[0] * frame.shape[1] > max_pixels:
        raise ServiceError(413, "frame_too_large", f"frame has {frame.shape[1]}x{frame.shape[0]} pixels, "
                      f"more than LWL_MAX_FRAME_PIXELS={max_pixels}")
    obs.LATENCY.labels("decode").observe(time.perf_counter() - t)
    return frame


def timed_model(call: Callable[[], T]) -> tuple[T, float]:
    """Run one model call; its result and milliseconds (also observed as the `model` stage)."""
    t = time.perf_counter()
    res = call()
    dt = time.perf_counter() - t
    obs.LATENCY.labels("model").observe(dt)
    return res, dt * 1000


def encode_result(res: Any, fmt: str, compute_ms: float) -> dict[str, Any]:
    """FrameResult -> the JSON result message (png: merged DAVIS PNG + 1-bit PNG per object; rle: COCO)."""
    labels = res.labels
    objs = []
    for oid, o in res.objects.items():
        m = labels == oid
        objs.append({
            "id": int(oid),
            "box": [float(v) for v in o.box] if o.box is not None else None,
            "score": float(o.score),
            "area": int(o.area),
            "mask": b64(binary_png(m)) if fmt == "png" else rle_encode(m),
        })
    out: dict[str, Any] = {
        "type": "result", "frame_index": int(res.frame_index),
        "size": [int(labels.shape[0]), int(labels.shape[1])], "objects": objs,
        "compute_ms": round(compute_ms, 3), "format": fmt,
    }
    if fmt == "png":
        out["labels"] = b64(encode_label_png(labels))
    return out


def encode_message(res: Any, fmt: str, model_ms: float) -> dict[str, Any]:
    """The result message of a model call, with the torch threads it ran on (compute thread or lane)."""
    t = time.perf_counter()
    out = encode_result(res, fmt, model_ms)
    out["threads"] = torch.get_num_threads()
    obs.LATENCY.labels("encode").observe(time.perf_counter() - t)
    return out


def result_of(call: Callable[[], Any], fmt: str) -> dict[str, Any]:
    """A timed model call on a tracker, encoded as a result message."""
    res, ms = timed_model(call)
    return encode_message(res, fmt, ms)


def error_message(e: BaseException, sid: str, op: str) -> dict[str, Any]:
    """An op's or frame's failure as the error message a client gets (and the metric it counts in)."""
    if isinstance(e, ServiceError):
        out = {"type": "error", "status": e.status, "code": e.code, "detail": e.detail}
    elif isinstance(e, MemoryError) or "out of memory" in str(e).lower() or "can't allocate" in str(e):
        log.error("op ran out of memory", exc_info=e, extra={"session_id": sid, "op": op})
        out = {"type": "error", "status": 503, "code": "out_of_memory", "detail": "the worker ran out of memory "
               "for this request; retry later or with fewer objects, smaller frames or a smaller crop"}
    elif isinstance(e, InputError):
        out = {"type": "error", "status": 400, "code": "bad_input", "detail": str(e)}
    elif isinstance(e, STORE_ERRORS):
        out = {"type": "error", "status": 503, "code": "store_down",
               "detail": "the store (Redis) is unavailable; retry shortly"}
    else:
        log.error("op failed", exc_info=e, extra={"session_id": sid, "op": op})
        out = {"type": "error", "status": 500, "code": "internal", "detail": "internal error (logged by the worker)"}
    obs.ERRORS.labels(out["code"]).inc()
    return out
