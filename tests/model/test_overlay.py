"""Overlay drawing: outlines exactly as a plain whole-frame computation, blending within one level of the
float formula, background pixels untouched."""

from __future__ import annotations

import numpy as np
import pytest

from model.media import DAVIS_PALETTE
from model.overlay import draw_overlay, outline


def _plain_outline(labels: np.ndarray) -> np.ndarray:
    """The definition, over the whole frame: an object pixel whose 4-neighbour differs, or on the edge."""
    lab = np.pad(labels, 1, mode="edge")
    c = lab[1:-1, 1:-1]
    edge = (c != lab[:-2, 1:-1]) | (c != lab[2:, 1:-1]) | (c != lab[1:-1, :-2]) | (c != lab[1:-1, 2:])
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    return edge & (labels > 0) & (labels != 255)


def _labels(seed: int, h: int = 61, w: int = 87) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), np.uint8)
    for oid in (1, 2, 3):
        y, x = rng.integers(-5, h), rng.integers(-5, w)  # some start past the frame's edge
        lab[max(y, 0) : y + rng.integers(1, 30), max(x, 0) : x + rng.integers(1, 30)] = oid
    lab[rng.random((h, w)) < 0.01] = 255
    return lab


@pytest.mark.parametrize("seed", range(12))
def test_outline_matches_the_whole_frame_definition(seed: int) -> None:
    lab = _labels(seed)
    assert np.array_equal(outline(lab), _plain_outline(lab))


def test_outline_of_no_object_is_empty() -> None:
    assert not outline(np.zeros((9, 7), np.uint8)).any()
    assert not outline(np.full((9, 7), 255, np.uint8)).any()


@pytest.mark.parametrize("seed", range(4))
def test_blend_within_one_level_of_the_float_formula(seed: int) -> None:
    lab = _labels(seed)
    frame = np.random.default_rng(100 + seed).integers(0, 256, (*lab.shape, 3), dtype=np.uint8)
    out = draw_overlay(frame, lab, alpha=0.4)
    obj = np.where(lab == 255, 0, lab)
    colour = DAVIS_PALETTE[obj].astype(np.float64)
    want = np.where((obj > 0)[..., None], 0.6 * frame + 0.4 * colour, frame)
    edge = _plain_outline(obj)
    want[edge] = colour[edge]
    assert np.abs(out.astype(np.float64) - want).max() <= 1.0
    assert np.array_equal(out[obj == 0], frame[obj == 0])  # background (and ignore pixels) untouched
    assert np.array_equal(out[edge], DAVIS_PALETTE[obj[edge]])
