"""Small random-weights models for tests and demos (no download, seconds to build)."""

from __future__ import annotations

from pathlib import Path

import torch

from model.checkpoint import save_model
from model.config import NetConfig
from model.network import build_network


def tiny_config(crop_size: tuple[int, int] = (64, 112), with_box: bool = True) -> NetConfig:
    """A very small compact network; masks are meaningless but deterministic."""
    return NetConfig(backbone="resnet18", tm_feature_dim=32, decoder_mdim=8, label_encoder_dims=(8, 16, 16),
                     box_encoder_dims=(16, 16) if with_box else None, crop_size=crop_size, bn_train=True)


def tiny_weights(path: str | Path, seed: int = 0, crop_size: tuple[int, int] = (64, 112),
                 with_box: bool = True) -> Path:
    """Write a seeded tiny checkpoint in the project's safetensors format."""
    torch.manual_seed(seed)
    cfg = tiny_config(crop_size, with_box)
    net = build_network(cfg)
    # Stem BN that normalises the 0..255 input keeps the random features in a sane range.
    with torch.no_grad():
        net.feature_extractor.bn1.running_var.fill_(4096.0)
    return save_model(path, net, cfg, extra_meta={"note": f"random weights, seed {seed}"})
