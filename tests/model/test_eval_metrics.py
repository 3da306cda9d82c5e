"""J and F on hand-made masks whose answers can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from model.eval.metrics import (
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    evaluate_sequence,
    f_measure,
    seg2bmap,
    summarise,
)


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_iou_empty_masks_score_one() -> None:
    z = np.zeros((10, 12), bool)
    assert float(db_eval_iou(z, z)) == 1.0
    assert float(db_eval_iou(z, ~z)) == 0.0


def test_iou_known_overlap() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :6] = True  # 60 px
    b[:, 4:] = True  # 60 px, overlap 20 px, union 100
    assert float(db_eval_iou(a, b)) == pytest.approx(0.2)


def test_iou_void_pixels_are_ignored() -> None:
    gt = np.zeros((10, 10), bool)
    gt[:5] = True
    pred = np.zeros((10, 10), bool)
    pred[:7] = True  # 20 false-positive pixels in rows 5, 6
    void = np.zeros((10, 10), bool)
    void[5:7] = True
    assert float(db_eval_iou(gt, pred, void)) == 1.0
    assert float(db_eval_iou(gt, pred)) == pytest.approx(50 / 70)


def test_seg2bmap_square() -> None:
    m = np.zeros((8, 8), bool)
    m[2:6, 2:6] = True
    b = seg2bmap(m)
    # inner pixels of the square whose right/lower/lower-right neighbour is outside,
    # plus the outer pixels just above/left whose neighbour is inside
    assert b[2:6, 2:6].sum() == 7
    assert b.sum() == 7 + 9  # row 1 cols 1..5, col 1 rows 2..5
    assert not b[6:, :].any()


def test_f_empty_conventions() -> None:
    z = np.zeros((20, 20), bool)
    m = _disk(20, 20, 10, 10, 5)
    assert f_measure(z, z) == 1.0
    assert f_measure(z, m) == 0.0  # nothing predicted: precision 1, recall 0
    assert f_measure(m, z) == 0.0  # predicted where nothing is: precision 0, recall 1


def test_f_identical_and_shifted_disks() -> None:
    h, w = 240, 427  # diagonal 489.7 -> tolerance ceil(3.92) = 4 px
    gt = _disk(h, w, 120, 200, 40)
    assert f_measure(gt, gt) == 1.0
    near = _disk(h, w, 120, 203, 40)  # 3 px shift: every boundary pixel within tolerance
    assert f_measure(near, gt) == pytest.approx(1.0)
    far = _disk(h, w, 120, 230, 40)  # 30 px shift: only the crossing regions match
    f_far = f_measure(far, gt)
    assert 0.0 < f_far < 0.4
    # J of the 30 px shift: lens area of two r=40 disks at distance 30, analytically ~0.53
    j = float(db_eval_iou(gt, far))
    r, d = 40.0, 30.0
    lens = 2 * r * r * np.arccos(d / (2 * r)) - d / 2 * np.sqrt(4 * r * r - d * d)
    assert j == pytest.approx(lens / (2 * np.pi * r * r - lens), abs=0.02)


def test_f_void_removes_boundary() -> None:
    gt = np.zeros((50, 50), bool)
    gt[10:30, 10:30] = True
    pred = np.zeros((50, 50), bool)
    pred[10:30, 10:40] = True  # extra block only inside the void region
    void = np.zeros((50, 50), bool)
    void[:, 30:] = True
    assert f_measure(pred, gt, void) == pytest.approx(1.0)
    assert f_measure(pred, gt) < 1.0


def test_boundary_stack_matches_frames() -> None:
    gt = np.stack([_disk(30, 40, 15, 20, 8), np.zeros((30, 40), bool)])
    pr = np.stack([_disk(30, 40, 15, 22, 8), np.zeros((30, 40), bool)])
    f = db_eval_boundary(gt, pr)
    assert f.shape == (2,)
    assert f[1] == 1.0


def test_statistics_decay_and_recall() -> None:
    vals = np.array([1.0, 1.0, 1.0, 0.9, 0.6, 0.4, 0.2, 0.0])
    m, o, d = db_statistics(vals)
    assert m == pytest.approx(vals.mean())
    assert o == pytest.approx(5 / 8)
    # toolkit bins for 8 frames: ids = [0, 2, 4, 5, 7] -> first bin [0:3], last bin [5:8]
    assert d == pytest.approx(1.0 - np.mean([0.4, 0.2, 0.0]))


def test_sequence_excludes_first_and_last_frame_and_handles_void() -> None:
    t, h, w = 5, 32, 32
    gt = np.zeros((t, h, w), np.uint8)
    gt[:, 8:24, 8:24] = 1
    gt[:, 0:4, :] = 255  # void strip
    pred = gt.copy()
    pred[pred == 255] = 1  # predicting inside void is free
    pred[0] = 0  # first and last frames are not scored
    pred[-1] = 0
    (s,) = evaluate_sequence("toy", gt, pred)
    assert s.j_mean == 1.0 and s.f_mean == 1.0
    assert len(s.j_per_frame) == 3


def test_sequence_multi_object_missing_and_extra_ids() -> None:
    t, h, w = 4, 20, 20
    gt = np.zeros((t, h, w), np.uint8)
    gt[:, 2:8, 2:8] = 1
    gt[:, 12:18, 12:18] = 2
    pred = gt.copy()
    pred[pred == 2] = 0  # object 2 lost after the first frame
    scores = evaluate_sequence("two", gt, pred)
    assert [s.object_id for s in scores] == [1, 2]
    assert scores[0].j_mean == 1.0 and scores[1].j_mean == 0.0
    summ = summarise(scores)
    assert summ.j_mean == pytest.approx(0.5)
    assert summ.jf_mean == pytest.approx((summ.j_mean + summ.f_mean) / 2)
    bad = pred.copy()
    bad[1, 0, 0] = 3
    with pytest.raises(ValueError):
        evaluate_sequence("two", gt, bad)
