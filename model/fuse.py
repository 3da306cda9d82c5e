"""Inference-only rewrite: fold each frozen BatchNorm into the convolution before it.

In eval mode a BatchNorm is an affine map per channel, y = s * (conv(x) + b - mean) + beta with
s = gamma / sqrt(var + eps), so the convolution can absorb it: weights w * s, bias s * (b - mean) + beta.
The network then skips a pass over every feature map (the bundled backbone has 50 BatchNorms); the
outputs equal the unfused network's up to float rounding (~1e-6 relative; tests/model/test_fuse.py).

Only `load_model` applies it, to a network in eval mode that is used for inference only: training
keeps its BatchNorm modules (their statistics and affine parameters are what a checkpoint stores).
"""

from __future__ import annotations

import torch
from torch import nn


def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make `conv` compute bn(conv(x)) (eval-mode statistics); `bn` must then be skipped."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.affine and conv.out_channels == bn.num_features)


def fuse_batchnorm(net: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution, in place; returns how many were folded.

    Two shapes occur in our networks: a Sequential holding (conv, bn, ...), and a block with attributes
    `convK` / `bnK` applied in that order (the ResNet stem and blocks: their forward calls bnK(convK(x))).
    """
    if net.training:
        raise ValueError("fuse_batchnorm needs a network in eval mode (inference only)")
    folded = 0
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                if _foldable(module._modules[a], module._modules[b]):
                    fold(module._modules[a], module._modules[b])
                    module._modules[b] = nn.Identity()
                    folded += 1
        for name, child in list(module.named_children()):
            if name.startswith("conv") and _foldable(child, getattr(module, "bn" + name[4:], None)):
                fold(child, getattr(module, "bn" + name[4:]))
                setattr(module, "bn" + name[4:], nn.Identity())
                folded += 1
    return folded
