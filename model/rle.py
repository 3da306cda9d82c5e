"""COCO run-length encoding of binary masks (the format of COCO JSON, pycocotools compatible).

Both directions are numpy array operations over all runs at once: a noisy 480p mask has ~10^5 runs,
which a per-run Python loop turns into a noticeable wait on every frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Five-bit groups per value that int64 arithmetic here handles (60 bits); a mask's runs need far fewer.
_MAX_GROUPS = 12


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Binary mask -> COCO compressed RLE {"size": [h, w], "counts": str} (column-major, as pycocotools)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": ""}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).astype(np.int64)
    if flat[0]:
        runs = np.concatenate([[0], runs])
    return {"size": [int(h), int(w)], "counts": _counts_to_string(runs)}


def _counts_to_string(runs: np.ndarray) -> str:
    """COCO's LEB128-like text form of run lengths (deltas against the run two back).

    Each value is written low 5 bits first, one character per group, 0x20 marking "more follows";
    it stops once the rest is pure sign extension of the group's bit 0x10 (so negatives work).
    """
    runs = np.asarray(runs, dtype=np.int64)
    if runs.size == 0:
        return ""
    x = runs.copy()
    x[3:] -= runs[1:-2]
    # groups needed: the smallest g with -2^(5g-1) <= x < 2^(5g-1)
    groups = np.ones(x.size, dtype=np.int64)
    for g in range(1, _MAX_GROUPS):
        limit = np.int64(1) << (5 * g - 1)
        groups += (x >= limit) | (x < -limit)
    starts = np.cumsum(groups) - groups
    total = int(groups.sum())
    value = np.repeat(x, groups)
    index = np.arange(total, dtype=np.int64) - np.repeat(starts, groups)
    chars = (value >> (5 * index)) & 0x1F
    chars |= (index < np.repeat(groups, groups) - 1).astype(np.int64) << 5
    return (chars + 48).astype(np.uint8).tobytes().decode("ascii")


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list of counts) -> uint8 binary mask (h, w).

    Runs alternate 0, 1, 0, ... from the first pixel (column-major); runs past the end are cut and
    a short total leaves the rest 0, as pycocotools does. Negative runs are malformed: ValueError.
    """
    h, w = rle["size"]
    n = int(h) * int(w)
    counts = rle["counts"]
    runs = _string_to_counts(counts) if isinstance(counts, str) else np.asarray(list(counts), dtype=np.int64)
    if runs.size and int(runs.min()) < 0:
        raise ValueError("malformed RLE: negative run length")
    # cut every run at the mask size first so the running total cannot overflow
    ends = np.minimum(np.cumsum(np.minimum(runs, n)), n)
    lengths = np.diff(ends, prepend=0)
    values = (np.arange(runs.size) & 1).astype(np.uint8)
    flat = np.zeros(n, dtype=np.uint8)
    filled = int(ends[-1]) if ends.size else 0
    flat[:filled] = np.repeat(values, lengths)
    return flat.reshape((h, w), order="F")


def _string_to_counts(s: str) -> np.ndarray:
    """COCO's compressed text form -> run lengths (int64), the inverse of _counts_to_string."""
    try:
        c = np.frombuffer(s.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError as e:
        raise ValueError("malformed RLE: counts string is not ASCII") from e
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    if int(c.min()) < 0 or int(c.max()) > 0x3F:
        raise ValueError("malformed RLE: character outside the COCO alphabet")
    last = np.flatnonzero((c & 0x20) == 0)  # the final character of each value
    if last.size == 0 or last[-1] != c.size - 1:
        raise ValueError("malformed RLE: counts string ends inside a value")
    first = np.concatenate([[0], last[:-1] + 1])
    groups = last - first + 1
    if int(groups.max()) > _MAX_GROUPS:
        raise ValueError("malformed RLE: run length too large")
    index = np.arange(c.size, dtype=np.int64) - np.repeat(first, groups)
    x = np.add.reduceat((c & 0x1F) << (5 * index), first)
    negative = (c[last] & 0x10) != 0
    x[negative] -= np.int64(1) << (5 * groups[negative])  # sign extension of the top group
    # deltas against the run two back: odd and even positions from index 1 and 2 are running sums
    x[1::2] = np.cumsum(x[1::2])
    x[2::2] = np.cumsum(x[2::2])
    return x
