"""Segmentation decoder D: mask encoding + backbone features -> full-resolution logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import make_norm

LAYERS = ("layer4", "layer3", "layer2", "layer1")
WIDTH_MULT = {"layer4": 4, "layer3": 2, "layer2": 2, "layer1": 1}


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize, skipped when the size already matches (as the reference does)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class TSE(nn.Module):
    """Target segmentation encoder: reduce features, fuse with the mask encoding."""

    def __init__(self, fc: int, oc: int, nf: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(fc, oc, 1), nn.ReLU(), nn.Conv2d(oc, oc, 1))
        c = oc + nf
        self.transform = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, oc, 3, padding=1), nn.ReLU(),
        )

    def forward(self, feat: torch.Tensor, enc: torch.Tensor, deeper: torch.Tensor | None):
        h = self.reduce(feat)
        pooled = F.adaptive_avg_pool2d(h, (1, 1)) if deeper is None else deeper
        return self.transform(torch.cat((h, enc), dim=1)), pooled


class RRB(nn.Module):
    """Residual refinement block."""

    def __init__(self, oc: int, norm: str) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(oc, oc, 1)
        self.bblock = nn.Sequential(
            nn.Conv2d(oc, oc, 3, padding=1), make_norm(norm, oc), nn.ReLU(), nn.Conv2d(oc, oc, 3, padding=1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1x1(x)
        return F.relu(h + self.bblock(h))


class CAB(nn.Module):
    """Channel attention block: gate the shallow map by pooled context, add the upsampled deeper map."""

    def __init__(self, oc: int) -> None:
        super().__init__()
        self.convreluconv = nn.Sequential(nn.Conv2d(2 * oc, oc, 1), nn.ReLU(), nn.Conv2d(oc, oc, 1))

    def forward(self, deeper: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        shallow_pool = F.adaptive_avg_pool2d(shallow, (1, 1))
        deeper_pool = deeper if deeper.shape[-1] == 1 else F.adaptive_avg_pool2d(deeper, (1, 1))
        a = self.convreluconv(torch.cat((shallow_pool, deeper_pool), dim=1))
        return shallow * torch.sigmoid(a) + resize(deeper, shallow.shape[-2:])


class Upsampler(nn.Module):
    """Final x2 bicubic, conv, bicubic to the output size, conv -> 1-channel logits."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, in_dim // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(in_dim // 2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, (2 * x.shape[-2], 2 * x.shape[-1]), mode="bicubic", align_corners=False)
        x = F.relu(self.conv1(x))
        x = F.interpolate(x, tuple(size), mode="bicubic", align_corners=False)
        return self.conv2(x)


class Decoder(nn.Module):
    """D: processes layer4 -> layer1 with TSE, RRB, CAB and projections."""

    def __init__(self, layer_channels: dict[str, int], num_filters: int = 16, mdim: int = 64, norm: str = "bn"):
        super().__init__()
        oc = {k: WIDTH_MULT[k] * mdim for k in LAYERS}
        self.TSE = nn.ModuleDict({k: TSE(layer_channels[k], oc[k], num_filters) for k in LAYERS})
        self.RRB1 = nn.ModuleDict({k: RRB(oc[k], norm) for k in LAYERS})
        self.CAB = nn.ModuleDict({k: CAB(oc[k]) for k in LAYERS})
        self.RRB2 = nn.ModuleDict({k: RRB(oc[k], norm) for k in LAYERS})
        self.proj = nn.ModuleDict(
            {k: nn.Sequential(nn.Conv2d(oc[p], oc[k], 1), nn.ReLU()) for p, k in zip(LAYERS, LAYERS[1:], strict=False)}
        )
        self.project = Upsampler(oc["layer1"])

    def forward(self, enc: torch.Tensor, feats: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """enc (F, S, D, h, w) or (B, D, h, w); feats layer1..4 with batch B -> logits (B, 1, *size)."""
        enc = enc.reshape(-1, *enc.shape[-3:])
        x = None
        for k in LAYERS:
            f = feats[k]
            s = resize(enc, f.shape[-2:])
            if x is not None:
                x = self.proj[k](x)
            h, deeper = self.TSE[k](f, s, x)
            h = self.RRB1[k](h)
            h = self.CAB[k](deeper, h)
            x = self.RRB2[k](h)
        return self.project(x, size)
