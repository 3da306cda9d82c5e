"""Datasets, synthetic video, sampler, processing and Lovasz loss: shapes and known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.train.datasets import CocoDataset, DavisDataset, YouTubeVOSDataset, _rle_decode, pick_validation
from model.train.lovasz import lovasz_sigmoid
from model.train.processing import LWLProcessing, ProcessingParams, collate, crop_window, mask_to_box
from model.train.sampler import MiniSequenceSampler
from model.train.synthetic import SyntheticSource, SyntheticVideo

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "davis2016-train"


def _write_video(root: Path, name: str, n: int, h: int = 40, w: int = 64,
                 ids: tuple[int, ...] = (1,)) -> None:
    (root / "JPEGImages" / name).mkdir(parents=True)
    (root / "Annotations" / name).mkdir(parents=True)
    for i in range(n):
        frame = np.full((h, w, 3), 10 * i, np.uint8)
        Image.fromarray(frame).save(root / "JPEGImages" / name / f"{i:05d}.jpg")
        lab = np.zeros((h, w), np.uint8)
        for k, oid in enumerate(ids):
            lab[5 + 10 * k:12 + 10 * k, 5 + i:20 + i] = oid
        im = Image.fromarray(lab, mode="P")
        im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        im.save(root / "Annotations" / name / f"{i:05d}.png")


def test_davis_layout_and_sampler(tmp_path: Path) -> None:
    _write_video(tmp_path, "a", 12, ids=(1, 2))
    _write_video(tmp_path, "b", 12)
    ds = DavisDataset(tmp_path, exclude=["b"])
    assert [s.name for s in ds.sequences] == ["a"]
    assert sorted(ds.object_areas(0)) == [1, 2]
    smp = MiniSequenceSampler([(ds, 1.0)], max_gap=5, seed=0)
    raw = smp.sample()
    assert raw.frames.shape == (4, 40, 64, 3) and raw.masks.shape == (4, 40, 64)
    assert set(np.unique(raw.masks)) <= {0, 1}
    warm = MiniSequenceSampler([(ds, 1.0)], num_test=1, same_frame=True, seed=0).sample()
    assert np.array_equal(warm.frames[0], warm.frames[1])


def test_youtubevos_meta(tmp_path: Path) -> None:
    _write_video(tmp_path, "v1", 10)
    stems = [f"{i:05d}" for i in range(0, 10, 2)]
    meta = {"videos": {"v1": {"objects": {"1": {"category": "x", "frames": stems}}}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    ds = YouTubeVOSDataset(tmp_path)
    assert len(ds.sequences[0].frames) == 5
    assert ds.object_areas(0)[1].shape == (5,)


def test_coco_polygon_and_rle(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "im.jpg")
    data = {
        "images": [{"id": 7, "file_name": "im.jpg", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 7, "iscrowd": 0, "area": 50, "bbox": [2, 2, 10, 5],
             "segmentation": [[2, 2, 12, 2, 12, 7, 2, 7]]},
            {"id": 2, "image_id": 7, "iscrowd": 1, "area": 50, "bbox": [0, 0, 1, 1],
             "segmentation": {"counts": [0, 1], "size": [20, 30]}},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path, tmp_path / "ann.json")
    lab = ds.load_labels(0, 0)
    assert lab.max() == 1 and 40 <= (lab == 1).sum() <= 70  # crowd instance dropped
    assert ds.box(0, 1) == (2.0, 2.0, 10.0, 5.0)
    m = _rle_decode([6, 2, 2, 2, 8], 4, 5)
    assert m.sum() == 4 and m[2:4, 1:3].all()


def test_synthetic_video_and_source() -> None:
    rng = np.random.default_rng(3)
    vid = SyntheticVideo(rng, (48, 80), max_objects=3)
    frames, labels = vid.render([0, 3, 6])
    assert frames.shape == (3, 48, 80, 3) and frames.dtype == np.uint8
    assert labels.shape == (3, 48, 80)
    smp = MiniSequenceSampler([(SyntheticSource((48, 80)), 1.0)], seed=1)
    raw = smp.sample()
    assert raw.masks[0].sum() > 10


def test_processing_shapes_and_crop_geometry() -> None:
    box = np.asarray([100.0, 50.0, 40.0, 30.0])
    x1, y1, x2, y2 = crop_window(box, 427, 240, 112, 64, 5.0)
    assert 0 <= x1 and x2 <= 427 and 0 <= y1 and y2 <= 240
    assert mask_to_box(np.zeros((4, 4))) is None
    smp = MiniSequenceSampler([(SyntheticSource((64, 112)), 1.0)], seed=2)
    proc = LWLProcessing(ProcessingParams(crop_size=(64, 112)), seed=0)
    batch = collate([proc(smp.sample()) for _ in range(2)])
    assert batch["train_images"].shape == (1, 2, 3, 64, 112)
    assert batch["test_images"].shape == (3, 2, 3, 64, 112)
    assert batch["test_masks"].shape == (3, 2, 64, 112)
    assert batch["train_boxes"].shape == (1, 2, 4)


def test_lovasz_known_values() -> None:
    gt = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert float(lovasz_sigmoid(gt.clone(), gt)) == pytest.approx(0.0)
    assert float(lovasz_sigmoid(1 - gt, gt)) == pytest.approx(1.0)
    # one foreground pixel missed fully: Jaccard loss 1/2
    assert float(lovasz_sigmoid(torch.tensor([1.0, 0.0, 0.0, 0.0]), gt)) == pytest.approx(0.5)
    p = torch.full((4,), 0.5, requires_grad=True)
    lovasz_sigmoid(p, gt).backward()
    assert p.grad is not None and p.grad[0] < 0 and p.grad[2] >= 0


def test_validation_pick_is_deterministic() -> None:
    names = [f"s{i}" for i in range(30)]
    assert pick_validation(names, 5) == pick_validation(list(reversed(names)), 5)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/davis2016-train next to the repo")
def test_shared_davis2016_loads() -> None:
    ds = DavisDataset(SHARED, sequences=["bmx-bumps"])
    areas = ds.object_areas(0)[1]
    assert len(areas) == 90 and (areas == 0).sum() == 14


def test_user_boxes_move_each_side_within_the_jitter_and_stay_in_the_image() -> None:
    """box_side_jitter: the box encoder learns from boxes drawn a little loose or tight, as people draw them."""
    box = np.asarray([20.0, 10.0, 50.0, 40.0])
    assert LWLProcessing(ProcessingParams())._user_box(box, 100, 80) is box  # off by default: the tight box
    proc = LWLProcessing(ProcessingParams(box_side_jitter=0.1), seed=3)
    got = np.stack([proc._user_box(box, 100, 80) for _ in range(200)])
    x0, y0, x1, y1 = got[:, 0], got[:, 1], got[:, 0] + got[:, 2], got[:, 1] + got[:, 3]
    assert np.all(np.abs(x0 - 20) <= 5 + 1e-9) and np.all(np.abs(x1 - 70) <= 5 + 1e-9)
    assert np.all(np.abs(y0 - 10) <= 4 + 1e-9) and np.all(np.abs(y1 - 50) <= 4 + 1e-9)
    assert (x0 < 20).any() and (x0 > 20).any()  # looser and tighter both occur
    edge = np.stack([proc._user_box(np.asarray([0.0, 0.0, 30.0, 30.0]), 100, 80) for _ in range(50)])
    assert edge[:, :2].min() >= 0  # never past the image
