"""Checkpoints: pytracking files without pytracking, our safetensors format, clear errors."""

from __future__ import annotations

import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from model.api import load_model
from model.checkpoint import convert, read_weights, save_model
from model.config import NetConfig
from model.errors import CheckpointError
from model.network import build_network


def _write_ltr_checkpoint(path: Path, net: torch.nn.Module, box: bool) -> None:
    """A file shaped like ltr's: pickled NetConstructor from a module that only exists while saving."""
    mod = types.ModuleType("ltr.admin.model_constructor")

    class NetConstructor:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    NetConstructor.__module__ = "ltr.admin.model_constructor"
    NetConstructor.__qualname__ = "NetConstructor"
    mod.NetConstructor = NetConstructor
    for name in ("ltr", "ltr.admin"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["ltr.admin.model_constructor"] = mod
    try:
        kwds = OrderedDict(filter_size=3, num_filters=16, optim_iter=5, backbone_pretrained=False, out_feature_dim=512,
                           label_encoder_dims=(16, 32, 64), use_bn_in_label_enc=False, clf_feat_blocks=0,
                           final_conv=True, backbone_type="mrcnn")
        ctor = NetConstructor(fun_name="steepest_descent_resnet50",
                              fun_module="ltr.models.lwl.lwl_box_net" if box else "ltr.models.lwl.lwl_net",
                              args=(), kwds=kwds)
        torch.save({"epoch": 80, "actor_type": "LWLActor", "net_type": "LWTLNet", "net": net.state_dict(),
                    "net_info": None, "constructor": ctor}, path)
    finally:
        for name in ("ltr.admin.model_constructor", "ltr.admin", "ltr"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    net = build_network(NetConfig.official_stage2())
    with torch.no_grad():
        net.feature_extractor.bn1.running_var.fill_(4096.0)
    path = tmp_path_factory.mktemp("ckpt") / "lwl_stage2_test.pth"
    _write_ltr_checkpoint(path, net, box=False)
    return path


def test_pytracking_file_loads_without_pytracking(official_pth: Path) -> None:
    assert "ltr" not in sys.modules
    w = read_weights(official_pth)
    assert w.config == NetConfig.official_stage2() and w.tracker_preset == "lwl_ytvos"
    assert len(w.state_dict) == 480
    assert "ltr" not in sys.modules


def test_round_trip_pth_to_safetensors_gives_identical_masks(official_pth: Path, tmp_path: Path) -> None:
    dst = convert(official_pth, tmp_path / "converted")
    assert dst.suffix == ".safetensors"
    rng = np.random.default_rng(0)
    frames = [(rng.random((96, 128, 3)) * 255).astype(np.uint8) for _ in range(3)]
    mask = np.zeros((96, 128), np.uint8)
    mask[30:60, 40:90] = 1
    outs = []
    for weights in (official_pth, dst):
        tr = load_model(weights, "cpu").new_tracker((64, 96))
        outs.append([tr.step(f, mask=mask if i == 0 else None).objects[1].prob for i, f in enumerate(frames)])
    for a, b in zip(*outs, strict=True):
        assert np.array_equal(a, b)


def test_save_and_read_project_format(tmp_path: Path) -> None:
    cfg = NetConfig.compact()
    net = build_network(cfg)
    p = save_model(tmp_path / "m.safetensors", net, cfg, extra_meta={"steps": 3})
    w = read_weights(p)
    assert w.config == cfg and w.meta["steps"] == 3
    assert all(torch.equal(w.state_dict[k], v) for k, v in net.state_dict().items())


def test_truncated_file_is_a_clear_error(official_pth: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.pth"
    bad.write_bytes(official_pth.read_bytes()[: 1_000_000])
    with pytest.raises(CheckpointError, match="cut.pth"):
        read_weights(bad)


def test_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.pth"
    bad.write_bytes(b"this is not a checkpoint at all, just text\n" * 10)
    with pytest.raises(CheckpointError, match="notes.pth"):
        read_weights(bad)


def test_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (eval, ("__import__('os').system('touch /tmp/lwl-pwned')",))

    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as fh:
        pickle.dump({"net": Evil()}, fh)
    with pytest.raises(CheckpointError):
        read_weights(bad)
    assert not Path("/tmp/lwl-pwned").exists()


def test_wrong_architecture_is_a_clear_error(tmp_path: Path) -> None:
    cfg = NetConfig.compact()
    sd = build_network(cfg).state_dict()
    sd.pop("decoder.project.conv2.bias")
    save_model(tmp_path / "broken.safetensors", sd, cfg)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "broken.safetensors")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such weights file"):
        read_weights(tmp_path / "nope.pth")
