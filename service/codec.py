"""Wire helpers shared by api, worker and SDK: message packing, COCO RLE, result encoding.

Broker messages are a JSON header plus one binary body holding zero or more blobs; the header's
"parts" lists the blob lengths, so images travel as raw bytes (no base64 inside Redis).
"""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from model.lite import PNG_RLE, rle_decode, rle_encode  # noqa: F401  (rle_*: re-exported, part of the wire format)


def pack(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, bytes]:
    """(header JSON, body) with the blob lengths recorded in header["parts"]."""
    return _header(header, [len(b) for b in blobs]), b"".join(blobs)


def _header(header: dict[str, Any], parts: list[int]) -> bytes:
    return json.dumps({**header, "parts": parts}, separators=(",", ":")).encode()


def unpack(header: bytes | str, body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of pack: the header dict and the list of blobs."""
    h = json.loads(header)
    blobs, pos = [], 0
    for n in h.get("parts", []):
        blobs.append(body[pos : pos + n])
        pos += n
    return h, blobs


def splice(obj: bytes, fields: dict[str, Any]) -> bytes:
    """Add fields to the text of a JSON object without parsing it: the api adds a client's `id` and
    `latency_ms` to the result the worker wrote, and the store adds a frame's `seq` to its header."""
    if not fields:
        return obj
    body = obj.rstrip()
    if not body.endswith(b"}"):
        raise ValueError("not the text of a JSON object")
    extra = json.dumps(fields, separators=(",", ":")).encode()[1:]
    empty = body[:-1].rstrip().endswith(b"{")
    return body[:-1] + (b"" if empty else b",") + extra


def frame_bytes(header: dict[str, Any], write: Callable[[BinaryIO], None]) -> bytes:
    """One self-contained record (a worker's snapshot): 4-byte header length, header, then the blob that
    `write` writes. Built in one buffer: a snapshot is tens of MB, and copying it once more cost as much
    as writing it. The header's room is reserved before the blob (its length is known only after) and
    padded with spaces, which JSON ignores."""
    room = len(_header(header, [10**15]))
    buf = io.BytesIO()
    buf.write(bytes(4 + room))
    write(buf)
    h = _header(header, [buf.tell() - 4 - room])
    buf.seek(0)
    buf.write(struct.pack(">I", room) + h.ljust(room))
    return buf.getvalue()


def parse_frame_bytes(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of frame_bytes."""
    (n,) = struct.unpack(">I", data[:4])
    return unpack(data[4 : 4 + n], data[4 + n :])


# ----------------------------------------------------------------------------- masks


def binary_png(mask: np.ndarray) -> bytes:
    """One object's mask as a 1-bit PNG (small on the wire, opens in any browser)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG", **PNG_RLE)
    return buf.getvalue()


def b64(data: bytes) -> str:
    """Standard base64 text."""
    return base64.b64encode(data).decode("ascii")


def labels_from_result(result: dict[str, Any]) -> np.ndarray:
    """Rebuild the merged label map of a result message (png: decode "labels"; rle: paint objects)."""
    if result.get("labels"):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(result["labels"]))), dtype=np.uint8)
    h, w = result["size"]
    out = np.zeros((h, w), dtype=np.uint8)
    for obj in result["objects"]:
        out[rle_decode(obj["mask"]) > 0] = obj["id"]
    return out
