"""Mini-sequence sampler: 1 train + 3 test frames of one object from a window of <= 100.

Why this shape: the few-shot learner is trained the way it is used, learning from one annotated
frame and then segmenting later frames while absorbing its own predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.train.datasets import VideoSource
from model.train.synthetic import SyntheticSource

MIN_VISIBLE_PIXELS = 10


@dataclass
class RawSample:
    """Frames (Q, H, W, 3) uint8 RGB and binary masks (Q, H, W) uint8 of one object; first num_train train."""

    frames: np.ndarray
    masks: np.ndarray
    num_train: int
    source: str
    boxes: np.ndarray | None = None  # (Q, 4) [x, y, w, h] when the dataset provides boxes (COCO)


class MiniSequenceSampler:
    """Draws RawSamples from weighted sources.

    same_frame=True gives the warm-up variant of the notes: every test frame is the train frame
    (segment the object given its own mask encoding, no temporal gap).
    """

    def __init__(self, sources: Sequence[tuple[VideoSource | SyntheticSource, float]], num_train: int = 1,
                 num_test: int = 3, max_gap: int = 100, same_frame: bool = False, seed: int = 0,
                 min_gap: int = 0) -> None:
        if not sources:
            raise ValueError("no training sources")
        self.sources = [s for s, _ in sources]
        w = np.asarray([float(p) for _, p in sources])
        self.probs = w / w.sum()
        self.num_train = num_train
        self.num_test = num_test
        self.max_gap = max_gap
        self.min_gap = min_gap  # test frames at least this far after the train frame (harder sampling)
        self.same_frame = same_frame
        self.rng = np.random.default_rng(seed)

    def sample(self) -> RawSample:
        src = self.sources[int(self.rng.choice(len(self.sources), p=self.probs))]
        if isinstance(src, SyntheticSource):
            return self._sample_synthetic(src)
        raw = self._sample_video(src)
        augment = getattr(src, "augment", None)  # e.g. composite.CompositeSource pastes distractors in
        return augment(raw, self.rng) if augment is not None and not self.same_frame else raw

    def _sample_synthetic(self, src: SyntheticSource) -> RawSample:
        q = self.num_train + self.num_test
        for _ in range(20):
            gap = 0 if self.same_frame else max(1, self.max_gap // 10)
            frames, labels = src.sample(self.rng, 1 if self.same_frame else q, gap)
            ids = [i for i in np.unique(labels[0]) if i != 0 and (labels[0] == i).sum() > MIN_VISIBLE_PIXELS]
            if ids:
                oid = int(self.rng.choice(ids))
                masks = (labels == oid).astype(np.uint8)
                if self.same_frame:
                    frames, masks = np.repeat(frames, q, 0), np.repeat(masks, q, 0)
                return RawSample(frames, masks, self.num_train, src.name)
        raise RuntimeError("synthetic source produced no visible object in 20 tries")

    def _pick_ids(self, vis: np.ndarray, n_frames: int) -> list[int] | None:
        """Spec §7.2 step 2 on the visible annotated-frame indices; None when no valid window exists."""
        gap_inc = 0
        q_test = self.num_test
        for _ in range(1000):
            base_cands = vis[vis < max(n_frames - q_test, 1)]
            if len(base_cands) == 0:
                return None
            base = int(self.rng.choice(base_cands))
            if self.same_frame:
                return [base] * (self.num_train + q_test)
            before = vis[(vis >= base - self.max_gap - gap_inc) & (vis < base)]
            train_ids = [base]
            if self.num_train > 1:
                if len(before) == 0:
                    gap_inc += 5
                    continue
                train_ids += list(self.rng.choice(before, self.num_train - 1))
            after = vis[(vis > base + self.min_gap) & (vis < base + self.max_gap + gap_inc)]
            if len(after) == 0:
                gap_inc += 5
                continue
            test_ids = sorted(int(i) for i in self.rng.choice(after, q_test, replace=True))
            return sorted(int(i) for i in train_ids) + test_ids
        return None

    def _sample_video(self, src: VideoSource) -> RawSample:
        min_visible = 2 * (self.num_train + self.num_test)
        for _ in range(1000):
            si = int(self.rng.integers(len(src)))
            areas = src.object_areas(si)
            if not areas:
                continue
            oid = int(self.rng.choice(sorted(areas)))
            info = src.sequences[si]
            vis_local = np.flatnonzero(areas[oid] > MIN_VISIBLE_PIXELS)
            if src.is_image_dataset:
                ids = [0] * (self.num_train + self.num_test)
            else:
                if len(vis_local) <= min_visible and not self.same_frame:
                    continue
                if len(vis_local) == 0:
                    continue
                local = self._pick_ids(vis_local, len(info.annotated))
                if local is None:
                    continue
                ids = [info.annotated[i] for i in local]
            cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            for fi in set(ids):
                cache[fi] = (src.load_frame(si, fi), (src.load_labels(si, fi) == oid).astype(np.uint8))
            frames = np.stack([cache[i][0] for i in ids])
            masks = np.stack([cache[i][1] for i in ids])
            boxes = None
            if hasattr(src, "box"):
                boxes = np.asarray([src.box(si, oid)] * len(ids), np.float32)
            return RawSample(frames, masks, self.num_train, src.name, boxes)
        raise RuntimeError(f"could not sample a valid mini-sequence from {src.name}")
