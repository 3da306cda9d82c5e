"""The api's input checks, before anything reaches a worker: ids and tokens, image headers (no pixels
decoded), masks, boxes, object counts, crop sizes, uploads, videos. Each failure is a ServiceError
with the 4xx a client gets. No model code runs here (model.lite is torch-free); the object limit is
checked here for the api and the worker alike (`check_count`)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
from pathlib import Path
from typing import Any

from fastapi import UploadFile
from PIL import Image

from model.errors import InputError
from model.lite import clip_box, mask_ids, probe_video, read_label_png, read_state_header
from service import jobs as jobfiles
from service.errors import ServiceError
from service.settings import parse_crop

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")  # still images Pillow reads
ID_CHARS = frozenset("0123456789abcdef")


def token_digest(token: str) -> str:
    """What a session's or job's record keeps of its token."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_token(token: str | None, digest: str, what: str) -> None:
    """A session's or job's token against the digest its record keeps (constant-time compare)."""
    if not token:
        raise ServiceError(401, "missing_token", f"{what} token missing: send Authorization: Bearer <token>, "
                           "X-Session-Token or ?token=")
    if not hmac.compare_digest(token_digest(token), digest):
        raise ServiceError(403, "wrong_token", f"wrong {what} token")


def check_id(value: str, what: str) -> None:
    """Session and job ids are 32 hex digits; anything else is unknown (and never reaches a store key)."""
    if len(value) != 32 or not set(value) <= ID_CHARS:
        raise ServiceError(404, f"unknown_{what}", f"unknown {what} {value[:40]!r}")


def plain(exc: Exception) -> str:
    """An exception's message without anything that looks like a server path."""
    return " ".join(w for w in str(exc).split() if "/" not in w or w.startswith("image/"))[:200]


def check_image(data: bytes, max_pixels: int, what: str = "image", kind: str = "frame") -> tuple[int, int]:
    """Header-only check of an uploaded frame (kind "frame") or mask (kind "mask"): a known image format,
    the pixel limit. Returns (H, W). No pixels are decoded here, so a small file that would decode to a huge
    image (a 1-bit PNG of 20000x20000) costs nothing; the worker decodes a frame once and answers bad_image
    if it is corrupt."""
    bad = "bad_image" if kind == "frame" else "bad_mask"
    if not data:
        raise ServiceError(400, bad, f"{what} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            fmt = im.format
    except Image.DecompressionBombError:
        raise ServiceError(413, f"{kind}_too_large", f"{what} has more than LWL_MAX_FRAME_PIXELS={max_pixels} "
                           "pixels") from None
    except Exception as exc:  # noqa: BLE001 - any header failure is the client's bad file
        raise ServiceError(400, bad, f"{what} cannot be decoded: {type(exc).__name__}: {plain(exc)}") from None
    if fmt not in IMAGE_FORMATS:
        raise ServiceError(400, bad, f"{what} is {fmt}, not one of {', '.join(IMAGE_FORMATS)}")
    if w * h > max_pixels:
        raise ServiceError(413, f"{kind}_too_large",
                           f"{what} is {w}x{h} = {w * h} pixels, more than LWL_MAX_FRAME_PIXELS={max_pixels}")
    return h, w


def check_mask(data: bytes, hw: tuple[int, int] | None, max_pixels: int, what: str = "mask") -> None:
    """Header-only mask checks before anything decodes it: a readable image within the pixel limit and,
    when the frame size is known, of that size."""
    mh, mw = check_image(data, max_pixels, what, kind="mask")
    if hw is not None and (mh, mw) != tuple(hw):
        raise ServiceError(400, "mask_size_mismatch", f"{what} size {mw}x{mh} differs from the frame size "
                           f"{hw[1]}x{hw[0]}")


def check_count(n: int, limit: int, have: int = 0, what: str = "a session holds") -> None:
    """LWL_MAX_OBJECTS, the one object limit: what a session holds plus what a request adds (or what a job
    tracks). The api checks it first; the worker again, in case its setting differs."""
    if have + n > limit:
        hint = " (a soft-edged greyscale or anti-aliased mask? save an indexed PNG)" if n > limit else ""
        raise ServiceError(400, "too_many_objects", f"{have + n} objects{hint}: {what} at most "
                           f"LWL_MAX_OBJECTS={limit}")


def _mask_objects(mask: bytes, hw: tuple[int, int], max_pixels: int, have: list[int], boxes: Any) -> list[int]:
    """The new object ids of an uploaded mask (header checked first, then decoded: numpy + Pillow)."""
    check_mask(mask, hw, max_pixels)
    try:
        lab = read_label_png(mask)
    except InputError as exc:
        raise ServiceError(400, "bad_mask", plain(exc)) from None
    present = mask_ids(lab)
    if not present:
        raise ServiceError(400, "empty_mask", "mask is empty: it has no object pixels")
    ids = [i for i in present if i not in have]
    if not ids and have and not boxes:
        raise ServiceError(400, "no_objects", f"the mask has no new object id: tracked objects are {have}")
    return ids


def check_objects(hw: tuple[int, int], mask: bytes | None, boxes: dict[int, list[float]] | None,
                  max_pixels: int, max_objects: int, have: list[int] | None = None) -> list[int]:
    """Mask/box checks against the frame size and the object limit, before any model work; returns the
    object ids they define. Boxes are clipped to the frame in place. `have`: ids the session tracks already."""
    if mask is None and not boxes:
        raise ServiceError(400, "no_objects", "give a mask (indexed PNG) or boxes for at least one object")
    have = have or []
    ids = _mask_objects(mask, hw, max_pixels, have, boxes) if mask is not None else []
    check_count(len(ids) + len(boxes or {}), max_objects, len(have))
    for oid, box in (boxes or {}).items():
        if not (1 <= oid <= 254):
            raise ServiceError(400, "bad_object_id", f"object id {oid} must be between 1 and 254")
        if oid in have:
            raise ServiceError(400, "duplicate_object", f"object {oid} is tracked already")
        try:  # a box drawn a little past the frame's edge is clipped to it (model.boxes)
            boxes[oid] = list(clip_box(box, hw))
        except InputError as exc:
            raise ServiceError(400, "box_outside_frame", f"object {oid}: {exc}") from None
        if oid in ids:
            raise ServiceError(400, "duplicate_object", f"object {oid} is given both in the mask and as a box")
        ids.append(oid)
    return ids


def check_tracked(oid: int, have: list[int], sid: str) -> None:
    """An object to remove must be tracked (REST by the session's record, a stream's edit by the tracker)."""
    if oid not in have:
        raise ServiceError(404, "unknown_object", f"object {oid} is not tracked in session {sid}")


def check_state(blob: bytes, max_pixels: int, max_objects: int) -> dict[str, Any]:
    """A saved tracker state (POST /v1/sessions `state`) by its torch-free header (model.state_header):
    this version, whole (not truncated), a frame within LWL_MAX_FRAME_PIXELS, objects within
    LWL_MAX_OBJECTS. The worker checks its model, weights and payload when it restores it."""
    try:
        head, _ = read_state_header(blob)
    except InputError as exc:
        raise ServiceError(400, "bad_state", str(exc)) from None
    if head["frame_hw"] is None or not head["objects"]:
        raise ServiceError(400, "bad_state", "the state has no frame or no object yet: nothing to continue")
    h, w = head["frame_hw"]
    if h * w > max_pixels:
        raise ServiceError(413, "frame_too_large", f"the state's frames are {w}x{h} = {w * h} pixels, more than "
                           f"LWL_MAX_FRAME_PIXELS={max_pixels}")
    check_count(len(head["objects"]), max_objects)
    return head


def object_id(v: Any) -> int:
    """An object id from JSON: an integer or a string of one (not 1.5, not true)."""
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip().lstrip("-").isdigit():
        raise ValueError(f"object id {str(v)[:20]!r} is not an integer")
    return int(v)


def parse_boxes(text: str | None) -> dict[int, list[float]] | None:
    """Boxes as JSON: {"1": [x, y, w, h], ...} or [{"id": 1, "box": [x, y, w, h]}, ...]."""
    if not text:
        return None
    try:
        raw = json.loads(text)
        items = raw.items() if isinstance(raw, dict) else ((d["id"], d["box"]) for d in raw)
        out = {object_id(k): [float(v) for v in b] for k, b in items}
        if any(len(b) != 4 for b in out.values()):
            raise ValueError("each box needs 4 numbers")
        if not all(math.isfinite(v) for b in out.values() for v in b):
            raise ValueError("box numbers must be finite")
        return out
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise ServiceError(400, "bad_boxes", 'boxes must be JSON like {"1": [x, y, w, h]} or '
                           f'[{{"id": 1, "box": [x, y, w, h]}}]: {exc}') from None


def boxes_header(boxes: dict[int, list[float]] | None) -> dict[str, list[float]]:
    """Boxes as a worker's op header and a job record carry them (JSON object keys are strings)."""
    return {str(k): v for k, v in (boxes or {}).items()}


MASK_FORMATS = ("png", "rle")  # masks in frame results (service.compute.encode_result)


def check_format(fmt: str) -> str:
    """The mask format of results: png or rle."""
    if fmt not in MASK_FORMATS:
        raise ServiceError(400, "bad_format", f"format must be png or rle, not {fmt[:20]!r}")
    return fmt


def check_crop(text: str | None) -> None:
    """A crop size a client asks for: HxW, multiples of 16 (the worker checks it against its limit)."""
    try:
        parse_crop(text)
    except ValueError as exc:
        raise ServiceError(400, "bad_crop_size", str(exc)) from None


def session_hw(meta: dict[str, str]) -> tuple[int, int] | None:
    """The session's frame size (H, W), as recorded when it was created."""
    return (int(meta["height"]), int(meta["width"])) if meta.get("height") and meta.get("width") else None


async def read_upload(f: UploadFile | None, limit: int, what: str, setting: str = "LWL_MAX_UPLOAD_MB",
                      code: str = "upload_too_large") -> bytes | None:
    """Read an uploaded part, refusing more than `limit` bytes with 413."""
    if f is None:
        return None
    data = await f.read(limit + 1)
    check_size(len(data), limit, what, setting, code)
    return data


def check_size(n: int, limit: int, what: str, setting: str = "LWL_MAX_UPLOAD_MB",
               code: str = "upload_too_large") -> None:
    """An upload, a stream's frame or edit, or a saved state within its limit in bytes (413 past it)."""
    if n > limit:
        raise ServiceError(413, code, f"{what} is larger than {setting}={limit / 2**20:g} MB")


def probe_upload(path: Path) -> tuple[int, tuple[int, int], float]:
    """Decode a whole uploaded video once (model.lite.probe_video): frame count, frame size, fps; 400 if
    undecodable."""
    try:
        info = probe_video(path, count=True)
    except InputError as exc:
        raise ServiceError(400, "bad_video", jobfiles.scrub_paths(str(exc), path)) from None
    return info.frames or 0, (info.height, info.width), info.fps


def model_name(profile: str | None, model: str | None) -> str | None:
    """The model a request asks for: `profile` (a bundled model's name: fast or accurate) or `model` (any
    served model's name); both may be given only when they agree."""
    if profile and model and profile != model:
        raise ServiceError(400, "bad_profile", f"profile {profile!r} and model {model!r} name different models: "
                           "give one")
    return profile or model or None
