"""Label generator E with weight predictor W and box encoder B.

E/W turn a mask into the few-shot label y and its spatial importance weights v, both (D, h, w):
this is what "learning what to learn" means. B turns a box plus target-model features into a
mask encoding that the decoder turns into an initial mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _he_init(module: nn.Module) -> None:
    """Conv weights ~ N(0, sqrt(2 / (k*k*out))), biases left at PyTorch defaults."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))


class PlainBasicBlock(nn.Module):
    """Residual block without normalisation; the shortcut is a 3x3 conv with bias."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.downsample = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + self.downsample(x))


class LabelEncoder(nn.Module):
    """E and W: mask (F, S, H, W) -> label y and sample weights v, each (F, S, D, H/16, W/16)."""

    def __init__(self, dims: tuple[int, int, int] = (16, 32, 64), num_filters: int = 16) -> None:
        super().__init__()
        d0, d1, d2 = dims
        self.conv_block = nn.Sequential(nn.Conv2d(1, d0, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res1 = PlainBasicBlock(d0, d1, 2)
        self.res2 = PlainBasicBlock(d1, d2, 2)
        self.label_pred = nn.Sequential(nn.Conv2d(d2, num_filters, 3, padding=1), nn.ReLU(inplace=True))
        self.samp_w_pred = nn.Conv2d(d2, num_filters, 3, padding=1)
        _he_init(self)
        self.samp_w_pred.weight.data.fill_(0)
        self.samp_w_pred.bias.data.fill_(1)

    def forward(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, s = mask.shape[:2]
        out = self.pool(self.conv_block(mask.reshape(-1, 1, *mask.shape[-2:])))
        out = self.res2(self.res1(out))
        label = self.label_pred(out)
        weight = self.samp_w_pred(out)
        return label.reshape(f, s, *label.shape[-3:]), weight.reshape(f, s, *weight.shape[-3:])


def render_box_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary rectangles (N, 1, H, W) from boxes (N, 4) [x, y, w, h].

    Each component is truncated separately and the rectangle excludes x0+w0 / y0+h0, as in the
    reference; negative corners are clamped at 0 (the reference would wrap around).
    """
    h, w = size
    out = torch.zeros(boxes.shape[0], 1, h, w, dtype=torch.float32, device=boxes.device)
    for i, b in enumerate(boxes.tolist()):
        x0, y0, bw, bh = (int(v) for v in b)
        out[i, 0, max(y0, 0):max(y0 + bh, 0), max(x0, 0):max(x0 + bw, 0)] = 1.0
    return out


class BoxEncoder(nn.Module):
    """B: [target-model features, box mask] -> mask encoding (F, S, D, h, w)."""

    def __init__(self, feat_dim: int, dims: tuple[int, ...] = (64, 64), num_filters: int = 16) -> None:
        super().__init__()
        blocks = []
        inplanes = feat_dim + 1
        for d in dims:
            blocks.append(PlainBasicBlock(inplanes, d, 1))
            inplanes = d
        self.res = nn.Sequential(*blocks)
        self.label_pred = nn.Sequential(nn.Conv2d(inplanes, num_filters, 3, padding=1), nn.ReLU(inplace=True))
        _he_init(self)

    def forward(self, boxes: torch.Tensor, feat: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """boxes (F, S, 4) in image coordinates; feat (F, S, C, h, w) or (N, C, h, w)."""
        f, s = boxes.shape[:2]
        mask = render_box_mask(boxes.reshape(-1, 4), image_size)
        mask = F.interpolate(mask, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat((feat.reshape(-1, *feat.shape[-3:]), mask), dim=1)
        enc = self.label_pred(self.res(x))
        return enc.reshape(f, s, *enc.shape[-3:])
