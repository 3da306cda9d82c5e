"""The paper's ablation baseline: labels = the raw mask, no weight predictor (Table 1, first row).

Why a module swap instead of a new architecture: the baseline keeps every other module identical, so
it trains and tracks with the same code; only E/W is replaced by a parameter-free map. The weights
file records `"ablation": "raw_labels"` in its metadata and loaders re-apply the swap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RAW_LABELS = "raw_labels"


class RawMaskLabels(nn.Module):
    """(y, v) = (mask average-pooled to stride 16, repeated to D channels; v = 1)."""

    def __init__(self, num_filters: int, stride: int = 16) -> None:
        super().__init__()
        self.num_filters = num_filters
        self.stride = stride

    def forward(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, s = mask.shape[:2]
        m = mask.reshape(f * s, 1, *mask.shape[-2:])
        h = -(-m.shape[-2] // self.stride)
        w = -(-m.shape[-1] // self.stride)
        y = F.adaptive_avg_pool2d(m, (h, w)).expand(-1, self.num_filters, -1, -1)
        y = y.reshape(f, s, self.num_filters, h, w)
        return y, torch.ones_like(y)


def apply_ablation(net: nn.Module, kind: str | None) -> nn.Module:
    """Swap the label encoder's forward for the ablation; the parameters stay (and stay unused)."""
    if kind in (None, "", "none"):
        return net
    if kind != RAW_LABELS:
        raise ValueError(f"unknown ablation {kind!r}")
    raw = RawMaskLabels(net.cfg.num_filters)
    net.label_encoder.forward = raw.forward  # type: ignore[method-assign]
    net.ablation = kind  # type: ignore[attr-defined]
    return net
