"""Composite mini-sequences: real training video with objects pasted in as distractors and occluders.

Why: the real training videos here hold one object each, so the learner never has to tell its target
from a similar object nearby, and the decoder never sees the target cut by something passing in front.
A composite takes a sampled mini-sequence and pastes, near the target, cut-outs of objects from other
training videos (and with some probability a copy of the target itself, taken from the train frame)
moving across the frames. A pasted object in front of the target hides that part of the target's mask;
one behind it shows only where the target is not. Only the original target is labelled, so every
pasted object is background the learner must reject.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from model.boxes import mask_to_box
from model.train.datasets import DavisDataset
from model.train.sampler import RawSample

Sprite = tuple[np.ndarray, np.ndarray]  # rgb (h, w, 3) uint8, mask (h, w) bool


@dataclass(frozen=True)
class CompositeParams:
    """How many objects are pasted, how large (relative to the target), how far they move."""

    max_pasted: int = 3
    target_copy_prob: float = 0.5  # paste a copy of the target itself: the hardest distractor
    front_prob: float = 0.5  # a pasted object passes in front of the target (an occluder)
    scale_range: tuple[float, float] = (0.5, 1.3)  # pasted size / target size
    travel: float = 1.5  # how far (in target sizes) an object moves over the mini-sequence


def _resize(rgb: np.ndarray, mask: np.ndarray, h: int, w: int) -> Sprite:
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    rgb2 = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    m2 = F.interpolate(m, size=(h, w), mode="nearest")[0, 0] > 0.5
    return rgb2.clamp(0, 255).to(torch.uint8).numpy(), m2.numpy()


def target_sprite(frame: np.ndarray, mask: np.ndarray) -> Sprite | None:
    """The target cut out of its frame (its bounding box, its mask), or None when it is not visible."""
    box = mask_to_box(mask)
    if box is None:
        return None
    x, y, w, h = (int(round(v)) for v in box)
    if w < 4 or h < 4:
        return None
    return frame[y:y + h, x:x + w].copy(), mask[y:y + h, x:x + w] > 0


def _paste(frame: np.ndarray, under: np.ndarray, sprite: Sprite, x0: int, y0: int) -> np.ndarray:
    """Write the sprite's pixels into `frame` at (x0, y0), except where `under` is set; returns the
    frame-sized mask of the pixels written."""
    rgb, m = sprite
    hh, ww = frame.shape[:2]
    sh, sw = m.shape
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + sw, ww), min(y0 + sh, hh)
    written = np.zeros((hh, ww), bool)
    if xa >= xb or ya >= yb:
        return written
    sub = m[ya - y0:yb - y0, xa - x0:xb - x0] & ~under[ya:yb, xa:xb]
    frame[ya:yb, xa:xb][sub] = rgb[ya - y0:yb - y0, xa - x0:xb - x0][sub]
    written[ya:yb, xa:xb] = sub
    return written


def composite(raw: RawSample, pool: list[Sprite], rng: np.random.Generator,
              p: CompositeParams = CompositeParams()) -> RawSample:
    """`raw` with 1..max_pasted objects pasted near its target in every frame (see the module doc)."""
    first = target_sprite(raw.frames[0], raw.masks[0])
    if first is None:
        return raw
    tx, ty, tw, th = mask_to_box(raw.masks[0])  # type: ignore[misc]
    size = float(np.sqrt(tw * th))
    frames, masks = raw.frames.copy(), raw.masks.copy()
    q, hh, ww = masks.shape
    for _ in range(int(rng.integers(1, p.max_pasted + 1))):
        copy = not pool or rng.random() < p.target_copy_prob  # no cut-outs: copies of the target only
        src = first if copy else pool[int(rng.integers(len(pool)))]
        sh, sw = src[1].shape
        scale = rng.uniform(*p.scale_range) * size / max(np.sqrt(sh * sw), 1.0)
        sprite = _resize(*src, max(2, int(sh * scale)), max(2, int(sw * scale)))
        if rng.random() < 0.5:
            sprite = (sprite[0][:, ::-1], sprite[1][:, ::-1])
        cx, cy = tx + tw / 2, ty + th / 2
        start = np.asarray([cx, cy]) + rng.uniform(-1.2, 1.2, 2) * size
        step = rng.uniform(-1, 1, 2) * p.travel * size / max(q - 1, 1)
        front = rng.random() < p.front_prob
        for i in range(q):
            x0, y0 = (start + i * step - np.asarray(sprite[1].shape[::-1]) / 2).astype(int)
            under = np.zeros((hh, ww), bool) if front else masks[i] > 0
            written = _paste(frames[i], under, sprite, int(x0), int(y0))
            if front:
                masks[i][written] = 0
    if (masks[0] > 0).sum() < 10:
        return raw  # the train frame's target is (nearly) all hidden: nothing to learn from
    return replace(raw, frames=frames, masks=masks, boxes=None)


class CompositeSource(DavisDataset):
    """A DAVIS-layout set whose mini-sequences the sampler hands to `augment`, which pastes objects from
    `pool` into them (cut-outs from other training videos)."""

    name = "composite"

    def __init__(self, root: str, pool: list[Sprite], params: CompositeParams, **kwargs: object) -> None:
        super().__init__(root, **kwargs)  # type: ignore[arg-type]
        self.pool = pool
        self.params = params

    def augment(self, raw: RawSample, rng: np.random.Generator) -> RawSample:
        return composite(raw, self.pool, rng, self.params)
