"""Stepping several trackers (sessions) and objects together gives the masks of stepping them one by one."""

from __future__ import annotations

import numpy as np
import pytest

from model.api import load_model
from model.errors import InputError
from model.tracker import step_many

H, W = 96, 128


def clip(seed: int, n: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    """Two or three objects moving over texture; the first frame's label map."""
    rng = np.random.default_rng(seed)
    bg = (rng.random((H, W, 3)) * 80 + 40).astype(np.uint8)
    frames = []
    for i in range(n):
        f = bg.copy()
        f[10 + i : 40 + i, 10 + 2 * i : 45 + 2 * i] = (220, 40, 40)
        f[55:85, 90 - 2 * i : 120 - 2 * i] = (40, 200, 60)
        if seed % 2:
            f[60:80, 20:50] = (40, 40, 220)
        frames.append(f)
    m = np.zeros((H, W), np.uint8)
    m[10:40, 10:45] = 1
    m[55:85, 90:120] = 2
    if seed % 2:
        m[60:80, 20:50] = 3
    return frames, m


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """The worst per-object IoU of two label maps (1.0 when equal)."""
    worst = 1.0
    for k in set(np.unique(a).tolist()) | set(np.unique(b).tolist()):
        if k:
            worst = min(worst, float(((a == k) & (b == k)).sum() / ((a == k) | (b == k)).sum()))
    return worst


@pytest.fixture(scope="module")
def model():  # noqa: ANN201
    """The bundled model: random tiny weights put every pixel near 0.5, where any float change flips it."""
    return load_model(None, "cpu")


def test_sessions_stepped_together_equal_one_by_one(model) -> None:  # noqa: ANN001
    clips = [clip(s) for s in range(3)]
    alone = []
    for frames, m in clips:
        tr = model.new_tracker((96, 176))
        alone.append([tr.step(frames[0], mask=m).labels] + [tr.step(f).labels for f in frames[1:]])
    trackers = [model.new_tracker((96, 176)) for _ in clips]
    together = [[tr.step(frames[0], mask=m).labels] for tr, (frames, m) in zip(trackers, clips, strict=True)]
    for i in range(1, 8):
        # sessions join and leave: session 2 is stepped on its own on odd frames
        batch = [(tr, c[0][i]) for k, (tr, c) in enumerate(zip(trackers, clips, strict=True)) if k < 2 or i % 2 == 0]
        for (tr, _), res in zip(batch, step_many(batch, max_batch=3), strict=True):
            together[trackers.index(tr)].append(res.labels)
        if i % 2:
            together[2].append(trackers[2].step(clips[2][0][i]).labels)
    for a, b in zip(alone, together, strict=True):
        assert len(a) == len(b) == 8
        assert min(iou(x, y) for x, y in zip(a, b, strict=True)) >= 0.999
    assert [tr.frame_index for tr in trackers] == [7, 7, 7]


def test_step_many_refuses_what_must_go_one_by_one(model) -> None:  # noqa: ANN001
    frames, m = clip(0)
    tr = model.new_tracker((96, 176))
    with pytest.raises(InputError, match="first frame"):
        step_many([(tr, frames[0])])
    tr.step(frames[0], mask=m)
    with pytest.raises(ValueError, match="once"):
        step_many([(tr, frames[1]), (tr, frames[2])])
    with pytest.raises(InputError, match="differs"):
        step_many([(tr, frames[1][:50])])
