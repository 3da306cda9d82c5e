"""User boxes (x, y, w, h in pixels) checked and clipped against the frame, and the tight box of a mask.

No torch here on purpose: the service's api process checks boxes before any worker sees them and
does not load the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from model.errors import InputError

Box = tuple[float, float, float, float]


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    """[x_min, y_min, x_max - x_min + 1, y_max - y_min + 1] of a mask's pixels (the tight box a user would
    drag around the object), or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.asarray([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], np.float64)


def clip_box(box: Sequence[float], frame_hw: tuple[int, int]) -> Box:
    """The part of `box` inside the frame; InputError if it is malformed or has no area there.

    A box drawn by hand often ends a pixel past the frame edge: it still says which object is meant,
    so it is clipped rather than refused.
    """
    x, y, w, h = _four_numbers(box)
    if w <= 0 or h <= 0:
        raise InputError(f"box {_fmt((x, y, w, h))} needs positive width and height")
    frame_h, frame_w = frame_hw
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(frame_w)), min(y + h, float(frame_h))
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {_fmt((x, y, w, h))} lies outside the {frame_w}x{frame_h} frame")
    return (x0, y0, x1 - x0, y1 - y0)


def _four_numbers(box: Sequence[float]) -> Box:
    """Four finite floats, or an InputError that shows what was given."""
    try:
        if isinstance(box, (str, bytes)):
            raise TypeError("a string is not a box")
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"box {box!r} must be four numbers x,y,w,h") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise InputError(f"box {box!r} must be four finite numbers x,y,w,h")
    return (x, y, w, h)


def _fmt(box: Box) -> str:
    return ",".join(f"{v:g}" for v in box)
