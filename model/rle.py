"""COCO run-length encoding of binary masks (the format of COCO JSON, pycocotools compatible)."""

from __future__ import annotations

from typing import Any

import numpy as np


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
    """COCO RLE (compressed string or uncompressed list of counts) -> uint8 binary mask (h, w)."""
    h, w = rle["size"]
    counts = rle["counts"]
    runs = list(counts) if not isinstance(counts, str) else _string_to_counts(counts)
    flat = np.zeros(h * w, dtype=np.uint8)
    pos, val = 0, 0
    for r in runs:
        flat[pos : pos + r] = val
        pos += r
        val ^= 1
    return flat.reshape((h, w), order="F")


def _string_to_counts(s: str) -> list[int]:
    """COCO's compressed text form -> run lengths."""
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
    return runs
