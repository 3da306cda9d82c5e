"""Network structure: official key lists load strictly, gradients reach what LWL meta-learns."""

from __future__ import annotations

import json

import torch

from model.config import NetConfig
from model.network import build_network
from model.testing import tiny_config
from tests.conftest import shared_path


def _check_keys(cfg: NetConfig, key_file: str) -> None:
    keys = json.loads(shared_path("spec", key_file).read_text())
    net = build_network(cfg)
    mine = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()]
    ref = [(k["name"], list(k["shape"]), k["dtype"]) for k in keys]
    assert mine == ref
    sd = {k["name"]: torch.zeros(k["shape"], dtype=getattr(torch, k["dtype"])) for k in keys}
    net.load_state_dict(sd, strict=True)


def test_stage2_keys_load_strictly() -> None:
    _check_keys(NetConfig.official_stage2(), "lwl_stage2_keys.json")


def test_boxinit_keys_load_strictly() -> None:
    _check_keys(NetConfig.official_boxinit(), "lwl_boxinit_keys.json")


def test_official_key_count_without_shared() -> None:
    """Appendix A totals hold even where the key lists are not available."""
    assert len(build_network(NetConfig.official_stage2()).state_dict()) == 480
    assert len(build_network(NetConfig.official_boxinit()).state_dict()) == 490


def test_official_bn_stays_in_eval_mode_while_training() -> None:
    net = build_network(NetConfig.official_stage2()).train()
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_gradients_reach_label_encoder_weight_predictor_and_target_features() -> None:
    torch.manual_seed(0)
    cfg = tiny_config((64, 96), with_box=False)
    net = build_network(cfg).train()
    imgs = torch.randn(4, 2, 3, 64, 96) * 50
    masks = torch.zeros(4, 2, 64, 96)
    masks[:, :, 16:48, 24:72] = 1
    logits = net(imgs[:1], imgs[1:], masks[:1], num_init_iter=3, num_update_iter=2)
    assert logits.shape == (3, 2, 64, 96)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks[1:])
    loss.backward()
    for name in ("label_encoder.label_pred.0.weight", "label_encoder.samp_w_pred.weight",
                 "target_model.feature_extractor.0.weight",
                 "target_model.filter_optimizer.residual_module.filter_reg", "feature_extractor.layer3.0.conv1.weight"):
        g = dict(net.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
