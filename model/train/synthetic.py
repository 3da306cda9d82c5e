"""Procedural training video: textured objects moving over textured backgrounds.

Why: 30 real videos are too few to teach the few-shot learner and decoder the task. Synthetic clips
give unlimited sequences with exact masks and the hard cases of VOS: scale/rotation change, occlusion
(z-ordered objects), similar-looking distractors (copies of the target's sprite) and several objects.
Textures come from images bundled inside scikit-image's wheel (no downloads) plus procedural noise,
stripes and checkers; optional real cut-outs (e.g. DAVIS objects with their masks) can be added as
sprites and real frames as backgrounds ("copy-paste" augmentation).

Motion is analytic (position/scale/angle are smooth functions of time), so any set of frame times
can be rendered directly without rendering the frames in between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_SKIMAGE_TEXTURES: list[np.ndarray] | None = None


def skimage_textures() -> list[np.ndarray]:
    """RGB uint8 images shipped inside the scikit-image wheel (never fetched from the network)."""
    global _SKIMAGE_TEXTURES
    if _SKIMAGE_TEXTURES is None:
        from skimage import data

        out = []
        for fn in ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "camera", "coins",
                   "moon", "hubble_deep_field", "retina", "immunohistochemistry", "cell", "page",
                   "colorwheel", "logo", "text", "clock"):
            try:
                im = np.asarray(getattr(data, fn)())
            except Exception:  # noqa: BLE001 - an image missing from this wheel version is simply skipped
                continue
            if im.dtype != np.uint8:
                im = (255 * (im.astype(np.float64) / max(float(im.max()), 1e-6))).astype(np.uint8)
            if im.ndim == 2:
                im = np.repeat(im[..., None], 3, axis=2)
            out.append(np.ascontiguousarray(im[..., :3]))
        _SKIMAGE_TEXTURES = out
    return _SKIMAGE_TEXTURES


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    coarse = torch.from_numpy(rng.random((1, channels, cells, max(2, cells * w // max(h, 1))), np.float32))
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()


def procedural_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random noise field, stripes or checkers in random colours (RGB uint8)."""
    kind = rng.integers(0, 4)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == 0:
        t = _smooth_noise(rng, h, w, int(rng.integers(3, 24)), 3)
        img = t * 255
    else:
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(4, 40)
        u = xx * math.cos(ang) + yy * math.sin(ang)
        if kind == 1:
            a = (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
        elif kind == 2:
            v = -xx * math.sin(ang) + yy * math.cos(ang)
            a = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
        else:
            a = _smooth_noise(rng, h, w, int(rng.integers(4, 16)), 1)[..., 0]
            a = (a > 0.5).astype(np.float32)
        img = a[..., None] * c1 + (1 - a[..., None]) * c2
        img = img + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def random_shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """Binary sprite mask (size x size): ellipse, star-like polygon or blob, roughly filling the square."""
    yy, xx = (np.mgrid[:size, :size].astype(np.float32) + 0.5) / size * 2 - 1
    kind = rng.integers(0, 3)
    if kind == 0:
        a, b = rng.uniform(0.4, 0.95, 2)
        return (xx / a) ** 2 + (yy / b) ** 2 <= 1
    if kind == 1:
        r = np.hypot(xx, yy)
        th = np.arctan2(yy, xx)
        k = int(rng.integers(3, 8))
        rad = 0.6 + rng.uniform(0.05, 0.35) * np.cos(k * th + rng.uniform(0, 6.3))
        return r <= rad
    n = _smooth_noise(rng, size, size, int(rng.integers(3, 6)), 1)[..., 0]
    fall = 1 - np.hypot(xx, yy)
    return (n * 0.6 + fall) > 0.55


def _patch(rng: np.random.Generator, tex: np.ndarray, h: int, w: int) -> np.ndarray:
    """Random crop of a texture resized to (h, w)."""
    th, tw = tex.shape[:2]
    ch = int(rng.integers(max(8, th // 4), th + 1))
    cw = int(rng.integers(max(8, tw // 4), tw + 1))
    y0 = int(rng.integers(0, th - ch + 1))
    x0 = int(rng.integers(0, tw - cw + 1))
    t = torch.from_numpy(np.array(tex[y0:y0 + ch, x0:x0 + cw], dtype=np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


@dataclass
class _Sprite:
    rgb: np.ndarray  # (s, s, 3) float
    alpha: np.ndarray  # (s, s) float 0/1
    label: int  # object id, 0 for a distractor
    pos: np.ndarray  # (2,) centre (x, y) at t=0, pixels
    vel: np.ndarray
    acc: np.ndarray
    scale0: float  # rendered size in px at t=0
    dscale: float  # log-scale change per frame
    angle0: float
    omega: float
    z: float


class SyntheticVideo:
    """One random clip; `render(times)` -> frames (T, H, W, 3) uint8, labels (T, H, W) uint8."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], max_objects: int = 3,
                 distractor_prob: float = 0.5, sprites: list[tuple[np.ndarray, np.ndarray]] | None = None,
                 backgrounds: list[np.ndarray] | None = None, speed: float = 1.0) -> None:
        h, w = size
        self.size = size
        texs = skimage_textures()
        bgs = backgrounds or []

        def texture(big: bool) -> np.ndarray:
            u = rng.random()
            if bgs and big and u < 0.5:
                return bgs[int(rng.integers(len(bgs)))]
            if texs and u < 0.75:
                return texs[int(rng.integers(len(texs)))]
            return procedural_texture(rng, 128 if not big else 256, 128 if not big else 448)

        # background: a texture twice the frame, panned slowly
        self.bg = _patch(rng, texture(True), 2 * h, 2 * w)
        self.bg_pos = rng.uniform(0, 1, 2) * np.array([w, h])
        self.bg_vel = rng.normal(0, 1.5 * speed, 2)
        n_obj = int(rng.integers(1, max_objects + 1))
        self.sprites: list[_Sprite] = []
        s_res = 96
        diag = math.hypot(h, w)
        for k in range(n_obj):
            if sprites and rng.random() < 0.5:
                rgb_src, alpha_src = sprites[int(rng.integers(len(sprites)))]
                rgb = _patch_exact(rgb_src, s_res)
                alpha = _patch_exact(alpha_src[..., None].astype(np.float32) * 255, s_res)[..., 0] > 127
            else:
                alpha = random_shape(rng, s_res)
                rgb = _patch(rng, texture(False), s_res, s_res)
            alpha_f = alpha.astype(np.float32)
            self.sprites.append(self._new_sprite(rng, rgb, alpha_f, k + 1, h, w, diag, speed))
        if rng.random() < distractor_prob:  # a look-alike: same sprite, different motion, not a target
            src = self.sprites[int(rng.integers(len(self.sprites)))]
            rgb = np.clip(src.rgb * rng.uniform(0.85, 1.15), 0, 255)
            self.sprites.append(self._new_sprite(rng, rgb, src.alpha, 0, h, w, diag, speed))

    @staticmethod
    def _new_sprite(rng: np.random.Generator, rgb: np.ndarray, alpha: np.ndarray, label: int, h: int, w: int,
                    diag: float, speed: float) -> _Sprite:
        scale0 = float(diag * rng.uniform(0.12, 0.4))
        return _Sprite(
            rgb=rgb, alpha=alpha, label=label,
            pos=rng.uniform([0.15 * w, 0.15 * h], [0.85 * w, 0.85 * h]),
            vel=rng.normal(0, 2.0 * speed, 2), acc=rng.normal(0, 0.05 * speed, 2),
            scale0=scale0, dscale=float(rng.normal(0, 0.01 * speed)),
            angle0=float(rng.uniform(-math.pi, math.pi)), omega=float(rng.normal(0, 0.03 * speed)),
            z=float(rng.random()),
        )

    def render(self, times: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        frames = np.zeros((len(times), h, w, 3), np.uint8)
        labels = np.zeros((len(times), h, w), np.uint8)
        order = sorted(self.sprites, key=lambda s: s.z)
        for i, t in enumerate(times):
            off = self.bg_pos + self.bg_vel * t
            x0 = int(np.clip(off[0], 0, w)) if np.isfinite(off[0]) else 0
            y0 = int(np.clip(off[1], 0, h)) if np.isfinite(off[1]) else 0
            img = self.bg[y0:y0 + h, x0:x0 + w].copy()
            lab = np.zeros((h, w), np.uint8)
            for s in order:
                rgb, a = _warp_sprite(s, float(t), h, w)
                m = a > 0.5
                img[m] = rgb[m]
                lab[m] = s.label
            frames[i] = np.clip(img, 0, 255).astype(np.uint8)
            labels[i] = lab
        return frames, labels


def _patch_exact(img: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img)).float().permute(2, 0, 1)[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def _warp_sprite(s: _Sprite, t: float, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Place the sprite at time t: similarity transform via grid_sample (output frame -> sprite coords)."""
    pos = s.pos + s.vel * t + 0.5 * s.acc * t * t
    scale = s.scale0 * math.exp(s.dscale * t)
    ang = s.angle0 + s.omega * t
    # normalised output coords -> sprite normalised coords
    ca, sa = math.cos(ang), math.sin(ang)
    sx = w / scale
    sy = h / scale
    cx = (2 * pos[0] / w) - 1
    cy = (2 * pos[1] / h) - 1
    # u_sprite = R^-1 * ((u_out - c) * (w/scale, h/scale))
    theta = torch.tensor([[ca * sx, sa * sy, -(ca * sx * cx + sa * sy * cy)],
                          [-sa * sx, ca * sy, -(-sa * sx * cx + ca * sy * cy)]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 4, h, w], align_corners=False)
    rgb = torch.from_numpy(s.rgb).float().permute(2, 0, 1)
    src = torch.cat((rgb, torch.from_numpy(s.alpha).float()[None]))[None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out[:3].permute(1, 2, 0).numpy(), out[3].numpy()


class SyntheticSource:
    """Endless synthetic clips for the sampler: `sample(rng, num_frames, max_gap)` -> frames, labels."""

    name = "synthetic"
    is_image_dataset = False

    def __init__(self, size: tuple[int, int] = (240, 432), max_objects: int = 3,
                 sprites: list[tuple[np.ndarray, np.ndarray]] | None = None,
                 backgrounds: list[np.ndarray] | None = None) -> None:
        self.size = size
        self.max_objects = max_objects
        self.sprites = sprites
        self.backgrounds = backgrounds

    def sample(self, rng: np.random.Generator, num_frames: int,
               max_gap: int) -> tuple[np.ndarray, np.ndarray]:
        vid = SyntheticVideo(rng, self.size, self.max_objects, sprites=self.sprites,
                             backgrounds=self.backgrounds)
        gaps = rng.integers(0, max_gap + 1, num_frames - 1) if max_gap > 0 else np.zeros(num_frames - 1, int)
        times = np.concatenate([[0], np.cumsum(gaps)]).astype(int)
        return vid.render(list(times))
