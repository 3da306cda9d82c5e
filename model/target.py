"""One tracked object: its crop window, its few-shot memory, its target model, and the per-frame procedure.

`Tracker` (model/tracker.py) owns one `Target` per object and merges their scores. A `Target` is
three parts, each with its own state that it serialises itself:

- `CropWindow`: where the object is, how large, and which image area its crop covers;
- `FewShotMemory`: the training samples (features + label masks) and their weights;
- `TargetModelLearner`: the target model tau, fitted by the learner A on the memory.

The per-frame procedure is split into stages so that several objects' crops can later go through
the backbone and the decoder as one batch while the learner stays per object:
`begin_frame` (memory/model/window update from the last merged mask) -> `window.crop` (1) ->
`extract_features` (2) -> `learner.apply` (3) -> `decode` (4) -> `finish_frame` (5, paste back).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from model.boxes import Box
from model.config import TrackerParams
from model.crop import (
    init_crop,
    init_crop_geometry,
    mask_state,
    paste_scores,
    sample_location,
    sample_patch,
)
from model.errors import InputError
from model.network import LWLNet, normalise

State = dict[str, Any]


# -- stages shared by all objects (batchable later) ------------------------------------------------------
def extract_features(net: LWLNet, patch: torch.Tensor,
                     device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Backbone layers (for the decoder) and target-model features x (for tau) of RGB crops (N, 3, h, w)."""
    feats = net.extract_features(normalise(patch.to(device)))
    return feats, net.target_features(feats["layer3"])


def decode(net: LWLNet, enc: torch.Tensor, feats: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Decoder logits (N, 1, h, w) at crop resolution (16x the feature grid) from the mask encoding."""
    return net.decoder(enc, feats, (x.shape[-2] * 16, x.shape[-1] * 16))


# -- crop window --------------------------------------------------------------------------------------------
class CropWindow:
    """Position/size of one object and the square-ish search area its fixed-size crop is cut from.

    The search area is `search_area_scale` times the object's size (by area), so the crop follows
    the object's scale; the scale may change by a bounded factor per frame. All arithmetic is the
    reference's float32 tensor arithmetic: a window one pixel off changes every later mask.
    """

    _TENSORS = ("pos", "target_sz", "target_scale", "base_target_sz", "init_pos", "init_scale", "init_shift",
                "init_exp_sz", "prev_pos", "prev_scale")

    def __init__(self, crop_hw: tuple[int, int], filter_size: int, params: TrackerParams) -> None:
        self.sample_sz = torch.tensor([float(crop_hw[0]), float(crop_hw[1])])  # crop size (H, W)
        self.feature_sz = self.sample_sz / 16
        self.kernel_sz = torch.tensor([float(filter_size)] * 2)
        self.params = params
        self.pos: torch.Tensor  # object centre (y, x) in frame pixels
        self.target_sz: torch.Tensor  # object size (h, w)
        self.target_scale: torch.Tensor  # frame pixels per crop pixel
        self.base_target_sz: torch.Tensor  # object size at scale 1
        self.init_pos = self.init_scale = self.init_shift = self.init_exp_sz = None  # first-frame crop
        self.prev_pos: torch.Tensor | None = None  # centre of the last crop
        self.prev_scale: torch.Tensor | None = None  # scale of the last crop

    @property
    def crop_hw(self) -> tuple[int, int]:
        return int(self.sample_sz[0]), int(self.sample_sz[1])

    def start(self, box: Box, frame_hw: tuple[int, int]) -> None:
        """Window of the first frame from the object's box; the first crop is shifted to stay inside the frame."""
        x, y, w, h = box
        self.pos = torch.tensor([y + (h - 1) / 2, x + (w - 1) / 2], dtype=torch.float32)
        self.target_sz = torch.tensor([h, w], dtype=torch.float32)
        search_area = torch.prod(self.target_sz * self.params.search_area_scale).item()
        self.target_scale = math.sqrt(search_area) / self.sample_sz.prod().sqrt()
        self.base_target_sz = self.target_sz / self.target_scale
        pos, scale, shift, exp_sz = init_crop_geometry(self.pos, self.target_scale, self.sample_sz, frame_hw)
        self.init_pos, self.init_scale, self.init_shift, self.init_exp_sz = pos, scale, torch.tensor(shift), exp_sz

    def crop_first(self, image: torch.Tensor, is_mask: bool = False) -> torch.Tensor:
        """The first frame's crop of an image or mask (1, C, H, W) -> (1, C, *crop_hw)."""
        return init_crop(image, self.init_pos, self.init_scale, self.init_shift.tolist(), self.init_exp_sz,
                         self.crop_hw, is_mask=is_mask)

    def follow(self, prob: torch.Tensor) -> None:
        """Move to the merged mask's centre and size (kept when the mask is too small); clamp the scale change."""
        if prob.sum() >= self.params.min_mask_area:
            self.pos, self.target_sz = mask_state(prob[0, 0], self.params.seg_to_bb_sz_factor)
        new_scale = torch.sqrt(self.target_sz.prod() / self.base_target_sz.prod())
        lo, hi = self.params.max_scale_change
        change = new_scale / self.target_scale
        if change < lo:
            new_scale = self.target_scale * lo
        elif change > hi:
            new_scale = self.target_scale * hi
        self.target_scale = new_scale
        self.target_sz = self.base_target_sz * self.target_scale

    def _centre(self) -> torch.Tensor:
        """Crop centre: the object centre moved half a pixel where the feature grid plus kernel is odd."""
        odd = (self.feature_sz + self.kernel_sz) % 2
        return self.pos + odd * self.target_scale * self.sample_sz / (2 * self.feature_sz)

    def crop(self, im: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: cut this frame's crop (1, 3, *crop_hw) and its frame box; remembered for the next frame."""
        centre = self._centre()
        patch, coords = sample_patch(im, centre, self.target_scale * self.sample_sz, self.sample_sz,
                                     mode="inside_major")
        self.prev_pos, self.prev_scale = centre, self.target_scale
        return patch, coords

    def crop_previous(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask of the last frame (1, 1, H, W) cut with the last frame's window, to label its features."""
        crop, _ = sample_patch(mask, self.prev_pos, self.prev_scale * self.sample_sz, self.sample_sz,
                               mode="inside_major", is_mask=True)
        return crop

    def paste(self, logits: torch.Tensor, coords: torch.Tensor, frame_hw: tuple[int, int]) -> torch.Tensor:
        """Stage 5: crop logits (1, 1, h, w) -> frame logits (H, W), -100 outside the crop."""
        sample_pos, sample_scale = sample_location(coords, self.sample_sz)
        return paste_scores(logits.cpu(), frame_hw, sample_pos, sample_scale)

    def to_state(self) -> State:
        return {k: getattr(self, k) for k in self._TENSORS}

    def load_state(self, state: State) -> None:
        for k in self._TENSORS:
            setattr(self, k, state[k])


# -- few-shot memory ----------------------------------------------------------------------------------------
class FewShotMemory:
    """The object's training set for the learner: features x, label masks and one weight per sample.

    Weighting follows the reference: each new sample gets the learning rate's share and older ones
    decay (or, with `lower_init_weight`, the first insertion gets weight 1), the new weight grows
    from the previously replaced slot's, and the weights are renormalised. When full, the lowest-
    weight unprotected slot is replaced. With a weight floor, the floor slots (the first sample and
    user corrections) share at least that total weight; the rest is then scaled by
    1 / (floor + rest), so the sum may end slightly above 1, as in the reference.
    """

    def __init__(self, size: int, learning_rate: float, lower_init_weight: bool, weight_floor: float,
                 channels_last: bool = True) -> None:
        self.size = size
        self.channels_last = channels_last  # the samples' layout (exact mode: the default layout)
        self.learning_rate = learning_rate
        self.lower_init_weight = lower_init_weight
        self.weight_floor = weight_floor
        self.samples: torch.Tensor  # (size, 1, C, h, w) features, on the network's device
        self.masks: torch.Tensor  # (size, 1, H, W) label masks at crop resolution, same device
        self.weights = torch.zeros(size)
        self.num_stored = 0
        self.prev_replace: int | None = None  # slot written by the last insertion
        self.protected: list[int] = []  # slots that are never replaced
        self.floor_slots: list[int] = []  # slots sharing the weight floor
        self._encoded: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * size  # E/W of each slot's mask
        self.scores: torch.Tensor | None = None  # (size, 1, D, h, w): each sample's T_tau(x), for the current tau
        self._scored = [False] * size  # which slots' scores hold

    @classmethod
    def from_params(cls, params: TrackerParams, channels_last: bool = True) -> FewShotMemory:
        return cls(params.sample_memory_size, params.learning_rate, params.lower_init_weight,
                   params.init_samples_minimum_weight, channels_last)

    def start(self, x: torch.Tensor, mask_crop: torch.Tensor) -> None:
        """Empty memory holding the first frame's sample at weight 1 (protected when there is a floor)."""
        self.samples = _sample_buffer(x, self.size, self.channels_last)
        self.masks = x.new_zeros(self.size, 1, *mask_crop.shape[-2:])
        self.samples[0] = x
        self.masks[0] = mask_crop[0].to(self.masks.device)
        self.weights = torch.zeros(self.size)
        self.weights[0] = 1.0
        self.num_stored = 1
        self.prev_replace = None
        self.protected = [0] if self.weight_floor else []
        self.floor_slots = [0]
        self._encoded = [None] * self.size
        self.scores, self._scored = None, [False] * self.size

    def replace_first_mask(self, mask_crop: torch.Tensor) -> None:
        """A correction on the object's first frame: the initial label changes, its features stay."""
        self.masks[0] = mask_crop[0].to(self.masks.device)
        self._encoded[0] = None

    def first(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first frame's sample: (features (1, 1, C, h, w), mask (1, 1, H, W))."""
        return self.samples[:1], self.masks[:1]

    def stored(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All stored samples with their weights, in slot order."""
        n = self.num_stored
        return self.samples[:n], self.masks[:n], self.weights[:n]

    def add(self, x: torch.Tensor, mask_crop: torch.Tensor, scores: torch.Tensor | None = None) -> int:
        """Store a sample with the reference's weighting and replacement; returns its slot. `scores`:
        T_tau(x) under the current tau, when the caller has them."""
        slot = self._next_slot()
        self._weigh_new(slot)
        self.prev_replace = slot
        self.samples[slot] = x
        self.masks[slot] = mask_crop[0].to(self.masks.device)
        self._encoded[slot] = None
        self._scored[slot] = scores is not None and self.scores is not None
        if self._scored[slot]:
            self.scores[slot] = scores.reshape(self.scores.shape[1:])
        self.num_stored = min(self.num_stored + 1, self.size)
        return slot

    def kept_scores(self, n: int | None = None) -> torch.Tensor | None:
        """T_tau(x) of the first n stored samples (all by default) under the current tau, if every one is kept."""
        n = self.num_stored if n is None else n
        return self.scores[:n] if self.scores is not None and all(self._scored[:n]) else None

    def keep_scores(self, scores: torch.Tensor | None) -> None:
        """Scores of the first len(scores) samples under a new tau; the others' no longer hold. None (the
        exact learner keeps none): no sample's scores hold."""
        if scores is None:
            self.scores, self._scored = None, [False] * self.size
            return
        if self.scores is None:
            self.scores = scores.new_zeros(self.size, *scores.shape[1:])
        n = scores.shape[0]
        self.scores[:n] = scores
        self._scored = [i < n for i in range(self.size)]

    def encoded(self, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], n: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels y and weights v (n, 1, D, h, w) of the first n stored masks (all by default).

        E/W is fixed at inference, so each mask is encoded once, when it is stored, and kept: encoding
        all 32 masks again on every update was the largest cost of a frame. Each mask is encoded alone,
        so a restored memory (which encodes everything again) gives the very same numbers.
        """
        n = self.num_stored if n is None else n
        for i in range(n):
            if self._encoded[i] is None:
                self._encoded[i] = encode(self.masks[i : i + 1])
        return (torch.cat([self._encoded[i][0] for i in range(n)]),
                torch.cat([self._encoded[i][1] for i in range(n)]))

    def has_room_for_correction(self) -> bool:
        """A correction takes a slot for good; at least two slots must stay replaceable."""
        return sum(i not in self.protected for i in range(self.size)) >= 2

    def add_correction(self, x: torch.Tensor, mask_crop: torch.Tensor, scores: torch.Tensor | None = None) -> int:
        """Store a user-corrected sample that is never replaced and shares the weight floor."""
        slot = self.add(x, mask_crop, scores)
        self.protected.append(slot)
        self.floor_slots.append(slot)
        return slot

    def _next_slot(self) -> int:
        """The next free slot, or the lowest-weight unprotected one when the memory is full."""
        if self.num_stored < self.size:
            return self.num_stored
        w = self.weights.clone()
        w[self.protected] = float("inf")
        return int(torch.argmin(w).item())

    def _weigh_new(self, slot: int) -> None:
        """Give `slot` the new sample's weight, renormalise, then apply the floor (in place, float32)."""
        sw, lr = self.weights, self.learning_rate
        if self.prev_replace is None:
            if self.lower_init_weight:
                sw[slot] = 1
            else:
                sw /= 1 - lr
                sw[slot] = lr
        else:
            sw[slot] = sw[self.prev_replace] / (1 - lr)
        sw /= sw.sum()
        if self.weight_floor:
            self._apply_floor(sw)

    def _apply_floor(self, sw: torch.Tensor) -> None:
        floor, idx = self.weight_floor, self.floor_slots
        rest = torch.ones_like(sw, dtype=torch.bool)
        rest[idx] = False
        if sw[idx].sum() < floor:
            sw /= floor + sw[rest].sum()
            sw[idx] = floor / len(idx)

    def to_state(self) -> State:
        """Copies, not views: the memory changes in place on the next insertion."""
        n = self.num_stored
        kept = self.kept_scores()
        samples = self.samples[:n].to("cpu", memory_format=torch.contiguous_format, copy=True)
        return {"samples": samples, "masks": self.masks[:n].to("cpu", copy=True),
                "weights": self.weights.clone(), "scores": kept.to("cpu", copy=True) if kept is not None else None,
                "num_stored": n, "prev_replace": self.prev_replace, "protected": list(self.protected),
                "floor_slots": list(self.floor_slots)}

    def load_state(self, state: State, device: torch.device) -> None:
        s, m, w = state["samples"], state["masks"], state["weights"]
        if w.shape[0] != self.size:
            raise InputError(f"tracker state has a memory of {w.shape[0]} samples, its parameters say {self.size}")
        self.samples = _sample_buffer(s.to(device), self.size, self.channels_last)
        self.masks = m.new_zeros(self.size, *m.shape[1:]).to(device)
        self.samples[: s.shape[0]] = s.to(device)
        self.masks[: m.shape[0]] = m.to(device)
        self.weights = w.clone()
        self.num_stored = int(state["num_stored"])
        self.prev_replace = state["prev_replace"]
        self.protected = [int(i) for i in state["protected"]]
        self.floor_slots = [int(i) for i in state["floor_slots"]]
        self._encoded = [None] * self.size
        self.scores, self._scored = None, [False] * self.size
        if state.get("scores") is not None:  # kept, so that a restored tracker goes on with the same numbers
            self.keep_scores(state["scores"].to(device))


def _sample_buffer(like: torch.Tensor, size: int, channels_last: bool) -> torch.Tensor:
    """Zeros (size, 1, C, h, w) for features like `like` (..., C, h, w), laid out channels-last (C varies
    fastest) unless asked otherwise: the learner's convolutions over the memory run about a fifth faster
    so on the CPU, but oneDNN then sums in another order than the reference's default layout."""
    c, h, w = like.shape[-3:]
    if not channels_last:
        return like.new_zeros(size, 1, c, h, w)
    return like.new_zeros(size, 1, h, w, c).permute(0, 1, 4, 2, 3)


# -- target model and its learner ---------------------------------------------------------------------------
class TargetModelLearner:
    """The object's target model tau: fitted from zeros on the first sample, refined on the memory.

    The refinement runs on every `update_every`-th frame (counted from the object's first frame)
    with fewer iterations than the first fit, starting from the current tau.
    """

    def __init__(self, net: LWLNet, init_iter: int, update_iter: int, update_every: int) -> None:
        self.net = net
        self.init_iter = init_iter
        self.update_iter = update_iter
        self.update_every = update_every
        self.tau: torch.Tensor | None = None  # (1, D, C, k, k) on the network's device

    @classmethod
    def from_params(cls, net: LWLNet, params: TrackerParams) -> TargetModelLearner:
        return cls(net, params.net_opt_iter, params.net_opt_update_iter, params.train_skipping)

    def learn_first(self, memory: FewShotMemory) -> None:
        """Fit tau from zeros to the first sample alone (unit weight)."""
        feat, _ = memory.first()
        label, sw = memory.encoded(self._encode, 1)
        self.tau, scores = self._fit(feat, label, sw, None, self.init_iter, None, None)
        memory.keep_scores(scores)

    def update_due(self, frame_num: int) -> bool:
        return (frame_num - 1) % self.update_every == 0

    def refine(self, memory: FewShotMemory) -> None:
        """A few more steps from the current tau on every stored sample with its weight."""
        feat, _, weights = memory.stored()
        label, sw = memory.encoded(self._encode)
        self.tau, scores = self._fit(feat, label, sw, weights, self.update_iter, self.tau, memory.kept_scores())
        memory.keep_scores(scores)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 3: mask encoding T_tau(x) (N, 1, D, h, w) of features x (N, C, h, w)."""
        return self.net.target_model.apply(self.tau, x.reshape(x.shape[0], 1, *x.shape[-3:]))

    def _encode(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E/W of one stored mask (1, 1, H, W)."""
        return self.net.encode_labels(mask)

    def _fit(self, feat: torch.Tensor, label: torch.Tensor, sw: torch.Tensor, weights: torch.Tensor | None,
             num_iter: int, tau: torch.Tensor | None, scores: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A's steps without autograd: (tau, the samples' scores under it)."""
        with torch.no_grad():
            if weights is not None:
                sw = sw * weights.to(sw.device).reshape(-1, 1, 1, 1, 1)
            return self.net.target_model.fit(feat, label, sw, num_iter, tau, scores)

    def to_state(self) -> State:
        return {"tau": self.tau.cpu() if self.tau is not None else None}

    def load_state(self, state: State, device: torch.device) -> None:
        tau = state["tau"]
        self.tau = tau.to(device) if tau is not None else None


# -- one object -----------------------------------------------------------------------------------------------
class Target:
    """The per-object procedure: starts the object, segments each frame, takes corrections."""

    def __init__(self, object_id: int, net: LWLNet, params: TrackerParams, crop_hw: tuple[int, int],
                 device: torch.device) -> None:
        self.object_id = object_id
        self.net = net
        self.params = params
        self.device = device
        self.window = CropWindow(crop_hw, net.cfg.filter_size, params)
        self.memory = FewShotMemory.from_params(params, channels_last=not net.exact)
        self.learner = TargetModelLearner.from_params(net, params)
        self.frame_num = 0  # frames seen by this object, its first frame is 1
        self.last_x: torch.Tensor | None = None  # features of the last crop, labelled on the next frame
        self.last_scores: torch.Tensor | None = None  # T_tau(last_x) under the current tau

    # -- first frame ------------------------------------------------------------------------------------
    def initialize(self, im: torch.Tensor, mask: torch.Tensor | None, box: Box, use_box: bool) -> torch.Tensor:
        """Start the object on this frame; returns its scores on this frame (H, W) for the merge."""
        box = _at_least_one_pixel(box)
        raw, soft = self._first_scores(im, mask, box, use_box)
        self.frame_num = 1
        self.window.start(box, (im.shape[-2], im.shape[-1]))
        _, x = extract_features(self.net, self.window.crop_first(im), self.device)
        self.memory.start(x, self.window.crop_first(soft, is_mask=True))
        self.learner.learn_first(self.memory)
        return raw

    def _first_scores(self, im: torch.Tensor, mask: torch.Tensor | None, box: Box,
                      use_box: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(frame logits (H, W), soft mask (1, 1, H, W)): the box encoder's, or +-100 around the given mask."""
        if use_box:
            x, y, w, h = box
            bb = torch.tensor([[int(x), int(y), int(w), int(h)]], dtype=torch.int64)
            logits = self.net.box_init_logits(normalise(im.to(self.device)), bb.float().to(self.device)).cpu()
            return logits[0, 0], torch.sigmoid(logits)
        assert mask is not None
        soft = mask.reshape(1, 1, *im.shape[-2:]).float()
        return (soft[0, 0] - 0.5) * 200.0, soft

    # -- later frames, in stages ------------------------------------------------------------------------
    def track(self, im: torch.Tensor, prev_prob: torch.Tensor) -> torch.Tensor:
        """Segment this frame given the object's merged probability on the last frame -> scores (H, W)."""
        self.begin_frame(prev_prob)
        patch, coords = self.window.crop(im)
        feats, x = extract_features(self.net, patch, self.device)
        enc = self.learner.apply(x)
        logits = decode(self.net, enc, feats, x)
        return self.finish_frame(logits, coords, x, enc, (im.shape[-2], im.shape[-1]))

    def begin_frame(self, prev_prob: torch.Tensor) -> None:
        """Learn from the last frame's merged mask (memory, then tau), then move the window onto it.

        This runs at the start of a frame because the merged mask exists only after all objects
        of the last frame were segmented.
        """
        self.frame_num += 1
        prob = prev_prob.reshape(1, 1, *prev_prob.shape[-2:])
        if self.frame_num > 2 and self.params.update_target_model:
            if self.frame_num % self.params.train_sample_interval == 0:
                self.memory.add(self.last_x, self.window.crop_previous(prob), self.last_scores)
            if self.learner.update_due(self.frame_num):
                self.learner.refine(self.memory)
        self.window.follow(prob)

    def finish_frame(self, logits: torch.Tensor, coords: torch.Tensor, x: torch.Tensor, enc: torch.Tensor,
                     frame_hw: tuple[int, int]) -> torch.Tensor:
        """Stage 5: keep the crop's features and their mask encoding T_tau(x) for the next frame's sample
        (the learner starts from this tau, so they are its scores); paste the logits into the frame."""
        self.last_x, self.last_scores = x, enc
        return self.window.paste(logits, coords, frame_hw)

    # -- corrections ------------------------------------------------------------------------------------
    def correct(self, mask: torch.Tensor) -> None:
        """A user-corrected mask (H, W) of the last frame becomes a permanent sample, then tau is refined.

        On the object's first frame the correction replaces the initial mask and tau is fitted again.
        """
        m = mask.reshape(1, 1, *mask.shape[-2:]).float()
        if self.frame_num <= 1:
            self.memory.replace_first_mask(self.window.crop_first(m, is_mask=True))
            self.learner.learn_first(self.memory)
            return
        if not self.memory.has_room_for_correction():
            raise InputError(f"object {self.object_id}: too many corrections for the few-shot memory")
        self.memory.add_correction(self.last_x, self.window.crop_previous(m), self.last_scores)
        self.learner.refine(self.memory)
        self.last_scores = None  # tau moved since last_x was scored

    # -- state --------------------------------------------------------------------------------------------
    def to_state(self) -> State:
        return {"object_id": self.object_id, "frame_num": self.frame_num,
                "last_x": self.last_x.cpu() if self.last_x is not None else None,
                "last_scores": self.last_scores.cpu() if self.last_scores is not None else None,
                "window": self.window.to_state(), "memory": self.memory.to_state(),
                "learner": self.learner.to_state()}

    @classmethod
    def from_state(cls, state: State, net: LWLNet, params: TrackerParams, crop_hw: tuple[int, int],
                   device: torch.device) -> Target:
        t = cls(int(state["object_id"]), net, params, crop_hw, device)
        t.frame_num = int(state["frame_num"])
        t.last_x = state["last_x"].to(device) if state["last_x"] is not None else None
        scores = state.get("last_scores")
        t.last_scores = scores.to(device) if scores is not None else None
        t.window.load_state(state["window"])
        t.memory.load_state(state["memory"], device)
        t.learner.load_state(state["learner"], device)
        return t

    # -- read-only views of the parts (tests compare them with the reference's intermediates) ----------
    @property
    def pos(self) -> torch.Tensor:
        return self.window.pos

    @property
    def target_scale(self) -> torch.Tensor:
        return self.window.target_scale

    @property
    def prev_pos(self) -> torch.Tensor | None:
        return self.window.prev_pos

    @property
    def samples(self) -> torch.Tensor:
        return self.memory.samples

    @property
    def masks(self) -> torch.Tensor:
        return self.memory.masks

    @property
    def tau(self) -> torch.Tensor | None:
        return self.learner.tau


def _at_least_one_pixel(box: Box) -> Box:
    """Width/height of at least 1: a one-pixel-wide object's box (w = 0) would give a zero scale."""
    x, y, w, h = box
    return (x, y, max(w, 1.0), max(h, 1.0))
