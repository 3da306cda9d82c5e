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


def _cubic_weights(t: float, a: float = -0.75) -> tuple[float, float, float, float]:
    """Keys' cubic convolution weights (a = -0.75, as torch's bicubic) of the 4 taps around offset t."""
    def near(d: float) -> float:
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: float) -> float:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


# Scale 2, half-pixel centres: output 2i samples the input at i - 1/4, output 2i+1 at i + 1/4.
_EVEN, _ODD = _cubic_weights(0.75), _cubic_weights(0.25)


def _double_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x twice as long along `dim` by cubic convolution, edges repeated (torch's clamped taps)."""
    n = x.shape[dim]
    edge_lo, edge_hi = x.narrow(dim, 0, 1), x.narrow(dim, n - 1, 1)
    padded = torch.cat([edge_lo, edge_lo, x, edge_hi, edge_hi], dim=dim)
    taps = [padded.narrow(dim, j, n) for j in range(5)]
    shape = list(x.shape)
    shape.insert(dim + 1, 2)
    out = x.new_empty(shape)
    for phase, weights, first in ((0, _EVEN, 0), (1, _ODD, 1)):
        dst = out.select(dim + 1, phase)
        dst.copy_(taps[first]).mul_(weights[0])
        for j in range(1, 4):
            dst.add_(taps[first + j], alpha=weights[j])
    shape = list(x.shape)
    shape[dim] = 2 * n
    return out.reshape(shape)


def bicubic_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize (align_corners=False). An exact x2 without autograd is written out as two separable
    passes of four multiply-adds: the same weights and edge rule as F.interpolate (equal to ~1e-6), about
    3x faster on the CPU, where torch's bicubic kernel was a sixth of a frame."""
    if torch.is_grad_enabled() or tuple(size) != (2 * x.shape[-2], 2 * x.shape[-1]):
        return F.interpolate(x, tuple(size), mode="bicubic", align_corners=False)
    return _double_along(_double_along(x, x.dim() - 1), x.dim() - 2)


class Upsampler(nn.Module):
    """Final x2 bicubic, conv, bicubic to the output size, conv -> 1-channel logits."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, in_dim // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(in_dim // 2, 1, 3, padding=1)
        self.exact = False  # the reference's operators (torch's bicubic, then conv2): LWLNet.set_exact

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.exact or torch.is_grad_enabled():
            x = F.interpolate(x, (2 * x.shape[-2], 2 * x.shape[-1]), mode="bicubic", align_corners=False)
            x = F.relu(self.conv1(x))
            return self.conv2(F.interpolate(x, tuple(size), mode="bicubic", align_corners=False))
        x = F.relu(self.conv1(bicubic_up(x, (2 * x.shape[-2], 2 * x.shape[-1]))))
        return self._upsample_and_conv2(x, size)

    def _upsample_and_conv2(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """conv2(bicubic(x)) with the channels mixed before the resize, for inference.

        Both are linear and the resize treats each channel alike, so mixing the C channels with each
        kernel tap's weights first, resizing those k*k maps and adding them shifted by the tap's offset
        gives the same sum (to float rounding). At the output size that is k*k one-channel maps
        instead of C: the last conv, with a single output channel, ran at a few GFLOP/s on the CPU and
        was, with the resize of its C channels, the dearest step of the decoder.
        """
        w = self.conv2.weight  # (1, C, kh, kw)
        kh, kw = w.shape[-2:]
        taps = bicubic_up(F.conv2d(x, w.permute(2, 3, 0, 1).reshape(kh * kw, -1, 1, 1)), size)
        h, wd = size
        out = self.conv2.bias.reshape(1, 1, 1, 1).expand(x.shape[0], 1, h, wd).clone()
        for i in range(kh * kw):
            dy, dx = i // kw - kh // 2, i % kw - kw // 2  # out[y, x] takes tap i's map at (y + dy, x + dx)
            out[..., max(0, -dy): h - max(0, dy), max(0, -dx): wd - max(0, dx)] += \
                taps[:, i: i + 1, max(0, dy): h + min(0, dy), max(0, dx): wd + min(0, dx)]
        return out


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
