"""Wire helpers shared by api, worker and SDK: message packing, COCO RLE, result encoding.

Broker messages are a JSON header plus one binary body holding zero or more blobs; the header's
"parts" lists the blob lengths, so images travel as raw bytes (no base64 inside Redis).
"""

from __future__ import annotations

import base64
import io
import json
import struct
from typing import Any

import numpy as np
from PIL import Image


def pack(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, bytes]:
    """(header JSON, body) with the blob lengths recorded in header["parts"]."""
    h = dict(header)
    h["parts"] = [len(b) for b in blobs]
    return json.dumps(h, separators=(",", ":")).encode(), b"".join(blobs)


def unpack(header: bytes | str, body: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of pack: the header dict and the list of blobs."""
    h = json.loads(header)
    blobs, pos = [], 0
    for n in h.get("parts", []):
        blobs.append(body[pos : pos + n])
        pos += n
    return h, blobs


def frame_bytes(header: dict[str, Any], *blobs: bytes) -> bytes:
    """One self-contained record (used for the replay log): 4-byte header length, header, body."""
    h, body = pack(header, *blobs)
    return struct.pack(">I", len(h)) + h + body


def parse_frame_bytes(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Inverse of frame_bytes."""
    (n,) = struct.unpack(">I", data[:4])
    return unpack(data[4 : 4 + n], data[4 + n :])


# ----------------------------------------------------------------------------- COCO RLE


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Binary mask -> COCO compressed RLE {"size": [h, w], "counts": str} (column-major, as pycocotools)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": ""}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": [int(h), int(w)], "counts": _counts_to_string(runs)}


def _counts_to_string(runs: list[int]) -> str:
    """COCO's LEB128-like text form of run lengths (deltas against the run two back)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO compressed RLE -> uint8 binary mask (h, w)."""
    h, w = rle["size"]
    s = rle["counts"]
    runs: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    flat = np.zeros(h * w, dtype=np.uint8)
    pos, val = 0, 0
    for r in runs:
        flat[pos : pos + r] = val
        pos += r
        val ^= 1
    return flat.reshape((h, w), order="F")


# ----------------------------------------------------------------------------- masks


def binary_png(mask: np.ndarray) -> bytes:
    """One object's mask as a 1-bit PNG (small on the wire, opens in any browser)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG")
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
