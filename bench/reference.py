"""Plain reference versions of the evaluation and wire-format code, written the obvious way.

The boundary F of the DAVIS 2017 toolkit step by step (shifted-copy boundary map, scipy's binary
dilation with skimage's disk) and COCO RLE one value and one run at a time. The parity tests check
the fast code in model/ against these, and `python -m bench.metrics` times both sides; they live
once, here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map built from east, south and south-east shifted copies, edges patched afterwards."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def ref_dilate(b: np.ndarray, radius: int) -> np.ndarray:
    """Dilation with skimage's disk as the structuring element, nothing beyond the border."""
    if not b.any():
        return b
    from scipy import ndimage
    from skimage.morphology import disk

    return ndimage.binary_dilation(b, structure=disk(radius).astype(bool))


def ref_f_measure(seg: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008,
                  dilate: Callable[[np.ndarray, int], np.ndarray] = ref_dilate) -> float:
    """Boundary F written out step by step, as the DAVIS 2017 toolkit defines it."""
    seg = seg.astype(bool)
    gt = gt.astype(bool)
    if void is not None:
        seg = seg & ~void.astype(bool)
        gt = gt & ~void.astype(bool)
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * float(np.linalg.norm(seg.shape)))
    fg_b = ref_seg2bmap(seg)
    gt_b = ref_seg2bmap(gt)
    fg_dil = dilate(fg_b, int(bound_pix))
    gt_dil = dilate(gt_b, int(bound_pix))
    n_fg = int(fg_b.sum())
    n_gt = int(gt_b.sum())
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = float((fg_b & gt_dil).sum()) / n_fg
        recall = float((gt_b & fg_dil).sum()) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def ref_counts_to_string(runs: list[int]) -> str:
    """One value at a time: delta against the run two back, 5 bits per character, low bits first."""
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


def ref_string_to_counts(s: str) -> list[int]:
    """Character by character inverse of ref_counts_to_string."""
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


def ref_decode(h: int, w: int, runs: list[int]) -> np.ndarray:
    """Paint the runs one slice at a time."""
    flat = np.zeros(h * w, dtype=np.uint8)
    pos, val = 0, 0
    for r in runs:
        flat[pos : pos + r] = val
        pos += r
        val ^= 1
    return flat.reshape((h, w), order="F")
