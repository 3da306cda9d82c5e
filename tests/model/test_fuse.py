"""Folding frozen BatchNorms into convolutions: the same outputs up to float rounding, inference only."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from model.api import BUNDLED_WEIGHTS, load_model
from model.backbone import build_backbone
from model.checkpoint import build_from_weights, read_weights
from model.fuse import fuse_batchnorm


def _randomise_bn(net: nn.Module, seed: int = 0) -> None:
    """Statistics and affine parameters far from the identity, so a wrong fold cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.2)
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))


@pytest.mark.parametrize("kind", ["resnet18", "efficientnet_lite0"])
def test_fused_backbone_gives_the_same_features(kind: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(kind).eval()
    _randomise_bn(net)
    fused = copy.deepcopy(net)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert fuse_batchnorm(fused) == n_bn > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 3, 64, 96) * 255 - 120
    with torch.no_grad():
        want, got = net(x), fused(x)
    for name in want:
        scale = want[name].abs().max()
        assert (want[name] - got[name]).abs().max() <= 1e-4 * scale, name


def test_a_network_in_training_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batchnorm(build_backbone("resnet18").train())


@pytest.mark.skipif(not BUNDLED_WEIGHTS.is_file(), reason="no bundled weights")
def test_load_model_fuses_and_the_network_gives_the_same_masks() -> None:
    model = load_model(None, "cpu")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.net.modules())
    plain = build_from_weights(read_weights(BUNDLED_WEIGHTS)).eval()  # the unfused network
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    x = torch.rand(1, 3, *model.default_crop_size) * 255 - 120
    with torch.no_grad():
        want, got = plain.extract_features(x), model.net.extract_features(x)
    for name in want:
        assert torch.allclose(want[name], got[name], rtol=1e-4, atol=1e-4 * want[name].abs().max()), name
