"""Crops and augmentation of a mini-sequence, in torch (no OpenCV dependency).

Why: the network is trained on target-centred crops of a fixed size with jittered boxes, so that it
sees the same geometry the tracker produces at inference, plus per-frame affine/brightness changes so
the few-shot learner cannot rely on pixel-exact appearance.
Differences from the reference (documented, deliberate): bilinear resizes use torch instead of OpenCV
and grayscale uses the ITU-R 601 weights on RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.boxes import mask_to_box
from model.network import normalise
from model.train.sampler import RawSample


def crop_window(box: np.ndarray, img_w: int, img_h: int, out_w: int, out_h: int,
                search_factor: float) -> tuple[int, int, int, int]:
    """`sample_target_adaptive` geometry (inside_major, no max scale change): crop (x1, y1, x2, y2)."""
    x, y, w, h = (float(v) for v in box)
    area = max(w * h, 1.0)
    cw = math.ceil(out_w * math.sqrt(area / (out_w * out_h)) * search_factor)
    ch = math.ceil(out_h * math.sqrt(area / (out_w * out_h)) * search_factor)
    rho = max(1.0, min(cw / img_w, ch / img_h))
    cw, ch = int(math.floor(cw / rho)), int(math.floor(ch / rho))
    cx, cy = x + 0.5 * w, y + 0.5 * h
    x1 = int(round(cx - cw / 2))
    y1 = int(round(cy - ch / 2))
    x2, y2 = x1 + cw, y1 + ch
    sx = max(0, -x1) + min(0, img_w - x2)
    x1, x2 = x1 + sx, x2 + sx
    sy = max(0, -y1) + min(0, img_h - y2)
    y1, y2 = y1 + sy, y2 + sy
    ovx = (max(0, -x1) + max(0, x2 - img_w)) // 2
    if ovx > 0:
        x1, x2 = x1 - x1 - ovx, x2 - x1 - ovx
    ovy = (max(0, -y1) + max(0, y2 - img_h)) // 2
    if ovy > 0:
        y1, y2 = y1 - y1 - ovy, y2 - y1 - ovy
    return x1, y1, x2, y2


def crop_resize(img: torch.Tensor, mask: torch.Tensor, win: tuple[int, int, int, int],
                out_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop img (3, H, W) float and mask (H, W) float to the window, pad (replicate / zero), resize."""
    x1, y1, x2, y2 = win
    h, w = img.shape[-2:]
    pl, pt = max(0, -x1), max(0, -y1)
    pr, pb = max(x2 - w + 1, 0), max(y2 - h + 1, 0)
    ic = img[:, y1 + pt:y2 - pb, x1 + pl:x2 - pr]
    mc = mask[y1 + pt:y2 - pb, x1 + pl:x2 - pr]
    if pl or pr or pt or pb:
        ic = F.pad(ic[None], (pl, pr, pt, pb), mode="replicate")[0]
        mc = F.pad(mc, (pl, pr, pt, pb), value=0.0)
    ic = F.interpolate(ic[None], size=out_hw, mode="bilinear", align_corners=False)[0]
    mc = F.interpolate(mc[None, None], size=out_hw, mode="nearest")[0, 0]
    return ic, mc


def random_affine(img: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, max_rot_deg: float,
                  max_log_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation and isotropic scale about the centre; zero border."""
    ang = math.radians(rng.uniform(-max_rot_deg, max_rot_deg))
    s = math.exp(rng.uniform(-max_log_scale, max_log_scale))
    h, w = img.shape[-2:]
    ca, sa = math.cos(ang) / s, math.sin(ang) / s
    # inverse map in normalised coords, correcting for the aspect ratio
    theta = torch.tensor([[ca, sa * h / w, 0.0], [-sa * w / h, ca, 0.0]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    img = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    mask = F.grid_sample(mask[None, None], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img, mask[0, 0]


@dataclass
class ProcessingParams:
    """Defaults are the reference values; crop_size is (H, W)."""

    crop_size: tuple[int, int] = (480, 832)
    search_factor: float = 5.0
    train_scale_jitter: float = 0.25
    test_scale_jitter: float = 0.5
    train_center_jitter: tuple[float, float] = (3.0, 3.0)  # (x, y)
    test_center_jitter: tuple[float, float] = (5.5, 4.5)
    gray_prob: float = 0.05
    flip_prob: float = 0.5
    max_rotation: float = 15.0
    max_log_scale: float = 0.2
    brightness: float = 0.2
    color_jitter: float = 0.0  # per-channel gain in [1 - c, 1 + c] on every frame (appearance change)
    affine: bool = True  # False for box-init training
    # Boxes handed to the box encoder, drawn as people draw them: each side moved by up to this fraction of
    # the box's size, in or out (0 = the tight box). The mask to learn stays the object's.
    box_side_jitter: float = 0.0


class LWLProcessing:
    """RawSample -> network-ready tensors (normalised BGR crops, binary masks, crop-space boxes)."""

    def __init__(self, params: ProcessingParams | None = None, seed: int = 0) -> None:
        self.p = params or ProcessingParams()
        self.rng = np.random.default_rng(seed)

    def _jitter(self, box: np.ndarray, scale_sig: float, center: tuple[float, float]) -> np.ndarray:
        wh = box[2:4] * np.exp(self.rng.normal(0, 1, 2) * scale_sig)
        c = box[0:2] + 0.5 * box[2:4]
        sz = math.sqrt(max(wh[0] * wh[1], 1.0))
        c = c + sz * np.asarray(center) * (self.rng.random(2) - 0.5)
        return np.concatenate([c - 0.5 * wh, wh])

    def _user_box(self, box: np.ndarray, img_w: int, img_h: int) -> np.ndarray:
        """The tight box with each side moved in or out by up to box_side_jitter of its size, kept in the
        image and at least a pixel wide."""
        j = self.p.box_side_jitter
        if j <= 0:
            return box
        x, y, w, h = (float(v) for v in box)
        dl, dr = self.rng.uniform(-j, j, 2) * w
        dt, db = self.rng.uniform(-j, j, 2) * h
        x0, x1 = max(0.0, x - dl), min(float(img_w), x + w + dr)
        y0, y1 = max(0.0, y - dt), min(float(img_h), y + h + db)
        return np.asarray([x0, y0, max(1.0, x1 - x0), max(1.0, y1 - y0)], np.float64)

    def __call__(self, raw: RawSample) -> dict[str, torch.Tensor]:
        p = self.p
        out_h, out_w = p.crop_size
        q = raw.frames.shape[0]
        imgs = torch.from_numpy(raw.frames).permute(0, 3, 1, 2).float()
        masks = torch.from_numpy(raw.masks).float()
        ref_box = raw.boxes[0] if raw.boxes is not None else mask_to_box(raw.masks[0])
        if ref_box is None:
            ref_box = np.asarray([0, 0, imgs.shape[-1], imgs.shape[-2]], np.float64)
        crops, cmasks, cboxes = [], [], []
        groups = [range(0, raw.num_train), range(raw.num_train, q)]
        for gi, grp in enumerate(groups):
            gray = self.rng.random() < p.gray_prob
            flip = self.rng.random() < p.flip_prob
            for i in grp:
                img, m = imgs[i], masks[i]
                if gray:
                    g = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
                    img = g.expand(3, -1, -1)
                if raw.boxes is not None:
                    box = raw.boxes[i].astype(np.float64)
                else:
                    b = mask_to_box(raw.masks[i])
                    box = ref_box if b is None else b
                if flip:
                    img, m = img.flip(-1), m.flip(-1)
                    box = box.copy()
                    box[0] = img.shape[-1] - box[0] - box[2]
                scale_sig = p.train_scale_jitter if gi == 0 else p.test_scale_jitter
                cj = p.train_center_jitter if gi == 0 else p.test_center_jitter
                jb = self._jitter(box, scale_sig, cj)
                win = crop_window(jb, img.shape[-1], img.shape[-2], out_w, out_h, p.search_factor)
                ci, cm = crop_resize(img, m, win, (out_h, out_w))
                sx, sy = out_w / (win[2] - win[0]), out_h / (win[3] - win[1])
                ub = self._user_box(box, img.shape[-1], img.shape[-2])
                cb = torch.tensor([(ub[0] - win[0]) * sx, (ub[1] - win[1]) * sy, ub[2] * sx, ub[3] * sy])
                if p.affine:
                    ci, cm = random_affine(ci, cm, self.rng, p.max_rotation, p.max_log_scale)
                ci = (ci * self.rng.uniform(1 - p.brightness, 1 + p.brightness)).clamp(0, 255)
                if p.color_jitter > 0:  # drawn only when asked: older recipes keep their random stream
                    gains = self.rng.uniform(1 - p.color_jitter, 1 + p.color_jitter, 3)
                    ci = (ci * torch.tensor(gains, dtype=ci.dtype).reshape(3, 1, 1)).clamp(0, 255)
                crops.append(normalise(ci))
                cmasks.append(cm)
                cboxes.append(cb)
        x = torch.stack(crops)
        m = torch.stack(cmasks)
        b = torch.stack(cboxes).float()
        n = raw.num_train
        return {"train_images": x[:n], "train_masks": m[:n], "train_boxes": b[:n],
                "test_images": x[n:], "test_masks": m[n:], "test_boxes": b[n:]}


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack along dimension 1 -> (frames, batch, ...), the reference convention."""
    return {k: torch.stack([s[k] for s in samples], dim=1) for k in samples[0]}
