"""The merge of the objects' frame logits: computed over the crops' box only, it equals the whole-frame
computation (up to the last bit of a few pixels), and the label map is exactly argmax's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.crop import OUTSIDE, _soft_aggregate, soft_aggregate
from model.tracker import _argmax_labels


def _scores(seed: int, k: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.full((k, h, w), OUTSIDE)
    for i in range(k):  # one crop per object, some past the frame's edge
        def pick(lo: int, hi: int) -> int:
            return int(torch.randint(lo, hi, (1,), generator=g))

        y0, x0, hh, ww = pick(-20, h), pick(-20, w), pick(1, h // 2 + 2), pick(1, w // 2 + 2)
        reg = s[i, max(y0, 0) : y0 + hh, max(x0, 0) : x0 + ww]
        reg.copy_(torch.randn(reg.shape, generator=g) * 8)
    return s


@pytest.mark.parametrize("seed", range(16))
def test_merge_over_the_crops_equals_the_whole_frame(seed: int) -> None:
    k, (h, w) = 1 + seed % 4, [(240, 427), (480, 854), (37, 53), (96, 128)][seed % 4]
    s = _scores(seed, k, h, w)
    if seed == 5:
        s[:] = OUTSIDE  # no object anywhere (all erased by corrections)
    fast, plain = soft_aggregate(s), _soft_aggregate(s)
    assert fast.shape == plain.shape == (k + 1, h, w)
    assert (fast - plain).abs().max() <= 1e-6
    ids = np.array([0, *range(3, 3 + k)], dtype=np.uint8)
    assert np.array_equal(_argmax_labels(fast.numpy(), ids), ids[plain.numpy().argmax(axis=0)])


def test_argmax_labels_ties_go_to_the_first_channel() -> None:
    p = np.array([[[0.5, 0.2]], [[0.5, 0.4]], [[0.0, 0.4]]], dtype=np.float32)  # (3, 1, 2)
    ids = np.array([0, 7, 9], dtype=np.uint8)
    assert _argmax_labels(p, ids).tolist() == ids[p.argmax(axis=0)].tolist() == [[0, 7]]
