"""Geometry of the tracker: crops around the target, paste-back, box from a soft mask, the merge.

Every step reproduces the reference's float32 tensor arithmetic (true division, truncation,
banker's rounding) because crop windows one pixel off change every later mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Coordinates are (y, x) float32 tensors of shape (2,), as in the reference.


def sample_patch(
    im: torch.Tensor, pos: torch.Tensor, sample_sz: torch.Tensor, output_sz: torch.Tensor,
    mode: str = "replicate", is_mask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a window of `sample_sz` frame pixels at `pos` out of im (1, C, H, W) and resize it to `output_sz`.

    Large windows first take every d-th pixel (d an integer, as the authors' tracker does to save
    work). `inside_major` shrinks a window larger than the frame to fit and moves it inside the
    frame. Pixels outside the frame are replicated (images) or zero (masks). Returns the patch and
    the window (tl_y, tl_x, br_y, br_x) in frame pixels.
    """
    posl = pos.long()
    if mode == "inside_major":
        im_sz = torch.tensor([im.shape[2], im.shape[3]])
        shrink = (sample_sz.float() / im_sz).min().clamp(min=1)
        sample_sz = (sample_sz.float() / shrink).long()
    resize_factor = torch.min(sample_sz.float() / output_sz.float()).item()
    df = int(max(int(resize_factor - 0.1), 1))
    sz = sample_sz.float() / df
    if df > 1:
        off = posl % df
        posl = torch.div(posl - off, df, rounding_mode="trunc")
        im = im[..., int(off[0]):: df, int(off[1]):: df]
    szl = torch.max(sz.round(), torch.tensor([2.0])).long()
    tl = posl - (szl - 1) / 2
    br = posl + szl / 2 + 1
    if mode == "inside_major":
        im2_sz = torch.tensor([im.shape[2], im.shape[3]])
        shift = (-tl).clamp(0) - (br - im2_sz).clamp(0)
        tl = tl + shift
        br = br + shift
        outside = torch.div((-tl).clamp(0) + (br - im2_sz).clamp(0), 2, rounding_mode="floor")
        shift = (-tl - outside) * (outside > 0).long()
        tl = tl + shift
        br = br + shift
    t0, t1, b0, b1 = (math.trunc(v) for v in (tl[0].item(), tl[1].item(), br[0].item(), br[1].item()))
    pad = (-t1, b1 - im.shape[3], -t0, b0 - im.shape[2])
    patch = F.pad(im, pad) if is_mask else F.pad(im, pad, mode="replicate")
    coords = df * torch.cat((tl, br)).reshape(1, 4)
    out_hw = (int(output_sz[0]), int(output_sz[1]))
    if tuple(patch.shape[-2:]) == out_hw:
        return patch.clone(), coords
    if is_mask:
        patch = F.interpolate(patch, out_hw, mode="nearest")
    else:
        patch = F.interpolate(patch, out_hw, mode="bilinear", align_corners=False)
    return patch, coords


def init_crop_geometry(
    pos: torch.Tensor, target_scale: torch.Tensor, img_sample_sz: torch.Tensor, im_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
    """First-frame crop: (rounded pos, scale, shift that keeps the window inside the frame, doubled crop size)."""
    im_sz = torch.tensor([float(im_hw[0]), float(im_hw[1])])
    exp_sz = (img_sample_sz * 2.0).long()
    exp_sz = (exp_sz + (exp_sz - img_sample_sz.long()) % 2).float()
    sample_sz = target_scale * img_sample_sz
    shrink = (sample_sz.float() / im_sz).min().clamp(min=1)
    sample_sz = sample_sz.float() / shrink
    init_scale = (sample_sz / img_sample_sz).prod().sqrt()
    tl = pos - (sample_sz - 1) / 2
    br = pos + sample_sz / 2 + 1
    global_shift = -((-tl).clamp(0) - (br - im_sz).clamp(0)) / init_scale
    return pos.round(), init_scale, global_shift.long().tolist(), exp_sz


def init_crop(
    im: torch.Tensor, init_pos: torch.Tensor, init_scale: torch.Tensor, shift: list[int], exp_sz: torch.Tensor,
    out_hw: tuple[int, int], is_mask: bool = False,
) -> torch.Tensor:
    """Large replicate crop at the rounded position, then the output window moved by the global shift."""
    big, _ = sample_patch(im, init_pos, init_scale * exp_sz, exp_sz, mode="replicate", is_mask=is_mask)
    pad_h = (out_hw[0] - big.shape[2]) / 2
    pad_w = (out_hw[1] - big.shape[3]) / 2
    pad = (math.floor(pad_w) + shift[1], math.ceil(pad_w) - shift[1],
           math.floor(pad_h) + shift[0], math.ceil(pad_h) - shift[0])
    return F.pad(big, pad, mode="replicate")


def sample_location(coords: torch.Tensor, img_sample_sz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and scale (image pixels per crop pixel) of a crop window, for the paste-back."""
    c = coords.reshape(-1).float()
    pos = 0.5 * (c[:2] + c[2:] - 1)
    scale = ((c[2:] - c[:2]) / img_sample_sz).prod().sqrt()
    return pos, scale


def paste_scores(scores: torch.Tensor, im_hw: tuple[int, int], sample_pos: torch.Tensor,
                 sample_scale: torch.Tensor) -> torch.Tensor:
    """Crop logits (1, 1, h, w) -> full-frame logits (H, W), -100 outside the crop."""
    re = F.interpolate(scores, scale_factor=sample_scale.item(), mode="bilinear", align_corners=False)
    out = torch.ones(im_hw, dtype=re.dtype) * OUTSIDE
    h, w = re.shape[-2:]
    r1 = int(sample_pos[0].item() - 0.5 * h)
    c1 = int(sample_pos[1].item() - 0.5 * w)
    r2, c2 = r1 + h, c1 + w
    r1p, c1p = max(0, -r1), max(0, -c1)
    r2p, c2p = max(r2 - im_hw[0], 0), max(c2 - im_hw[1], 0)
    if r1 + r1p < r2 - r2p and c1 + c1p < c2 - c2p:
        out[r1 + r1p:r2 - r2p, c1 + c1p:c2 - c2p] = re[0, 0, r1p:h - r2p, c1p:w - c2p]
    return out


def mask_state(prob: torch.Tensor, sz_factor: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre of mass and 4*std size of a probability map (H, W): the object's box without thresholding."""
    total = prob.sum()
    ys = torch.arange(prob.shape[-2], dtype=torch.float32)
    xs = torch.arange(prob.shape[-1], dtype=torch.float32)
    rows = prob.sum(dim=-1)
    cols = prob.sum(dim=-2)
    e_y = torch.sum(rows * ys) / total
    e_x = torch.sum(cols * xs) / total
    e_h = torch.sum(rows * (ys - e_y) ** 2) / total
    e_w = torch.sum(cols * (xs - e_x) ** 2) / total
    return torch.stack([e_y, e_x]), torch.stack([e_h.sqrt() * sz_factor, e_w.sqrt() * sz_factor])


OUTSIDE = -100.0  # an object's logit outside its crop (paste_scores) and where a correction erased it


def soft_aggregate(scores: torch.Tensor) -> torch.Tensor:
    """LWL's merge: per-object logits (K, H, W) -> probabilities (K+1, H, W), background first.

    The background's probability is the product of (1 - p) over the objects; its logit and the
    objects' logits go through a softmax.

    The merge is per pixel, and every pixel where all objects' logits are OUTSIDE has the same inputs,
    so it is computed over the box holding the other pixels only and the rest is filled with the value
    of one such pixel: a quarter of the time on a 1080p frame, where the crops cover a small part.
    The result equals the whole-frame computation except in the last bit of a few pixels (each
    elementwise kernel computes the last elements of its tensor without SIMD, and which pixels are
    last depends on the tensor's extent).
    """
    k, h, w = scores.shape
    inside = (scores != OUTSIDE).any(dim=0)
    rows, cols = torch.nonzero(inside.any(dim=1)), torch.nonzero(inside.any(dim=0))
    if rows.numel() == 0:
        y0 = y1 = x0 = x1 = 0
    else:
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (y1 - y0) * (x1 - x0) > 0.75 * h * w:
        return _soft_aggregate(scores)
    fill = _soft_aggregate(scores.new_full((k, 1, 64), OUTSIDE))[:, 0, 0]
    out = fill.reshape(k + 1, 1, 1).repeat(1, h, w)
    if y1 > y0:
        out[:, y0:y1, x0:x1] = _soft_aggregate(scores[:, y0:y1, x0:x1].contiguous())
    return out


def _soft_aggregate(scores: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(scores)
    eps = 1e-7
    bg = torch.prod(1 - prob, dim=0).clamp(eps, 1.0 - eps)
    bg_score = (bg / (1.0 - bg)).log()
    allsc = torch.cat((bg_score.unsqueeze(0), scores), dim=0)
    return torch.stack([1.0 / (allsc - s.unsqueeze(0)).exp().sum(dim=0) for s in allsc], dim=0)
