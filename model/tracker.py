"""LWL inference (paper Sec. 3.5, spec §6): one target per object, soft aggregation across objects.

`Tracker` is the streaming contract: `step(frame, mask=None, boxes=None)` segments one frame and
starts the objects that appear in `mask`/`boxes`; `correct` and `add_objects` act on the last
frame; `export_state`/`restore` let another process continue with identical masks.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from model.config import TrackerParams
from model.crop import (
    init_crop,
    init_crop_geometry,
    mask_state,
    paste_scores,
    sample_location,
    sample_patch,
    soft_aggregate,
)
from model.errors import InputError
from model.media import box_from_label
from model.network import LWLNet, normalise

STATE_VERSION = 1


@dataclass
class ObjectResult:
    """One object on one frame."""

    prob: np.ndarray  # float32 (H, W), merged probability
    box: tuple[float, float, float, float] | None  # x, y, w, h of the predicted mask
    score: float  # mean probability inside the predicted mask
    area: int  # pixels in the merged label map


@dataclass
class FrameResult:
    """Merged output of one frame."""

    frame_index: int
    labels: np.ndarray  # uint8 (H, W)
    objects: dict[int, ObjectResult] = field(default_factory=dict)


class _Target:
    """State and procedure of one object (spec §6.2-6.8)."""

    def __init__(self, object_id: int, net: LWLNet, params: TrackerParams, crop_hw: tuple[int, int],
                 device: torch.device) -> None:
        self.object_id = object_id
        self.net = net
        self.params = params
        self.device = device
        self.img_sample_sz = torch.tensor([float(crop_hw[0]), float(crop_hw[1])])
        self.feature_sz = self.img_sample_sz / 16
        self.kernel_size = torch.tensor([float(net.cfg.filter_size)] * 2)
        self.frame_num = 0
        self.num_stored = 0
        self.prev_replace: int | None = None
        self.protected: list[int] = []  # slots that are never replaced
        self.weight_floor_slots: list[int] = []  # slots sharing init_samples_minimum_weight

    # -- helpers ------------------------------------------------------------------------------------
    def _features(self, patch: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        feats = self.net.extract_features(normalise(patch.to(self.device)))
        return feats, self.net.target_features(feats["layer3"])

    def _learn(self, feat: torch.Tensor, masks: torch.Tensor, temporal: torch.Tensor | None, num_iter: int,
               tau: torch.Tensor | None) -> torch.Tensor:
        """Run A outside inference mode (autograd computes the Gauss-Newton step, spec §3.5)."""
        with torch.inference_mode(False), torch.no_grad():
            feat, masks = feat.clone(), masks.clone()
            label, sw = self.net.encode_labels(masks)
            if temporal is not None:
                sw = sw * temporal.clone().to(sw.device).reshape(-1, 1, 1, 1, 1)
            tau = tau.clone() if tau is not None else None
            tau, _, _ = self.net.learn(feat, label, sw, num_iter, tau=tau)
        return tau

    def _centered_pos(self) -> torch.Tensor:
        return self.pos + ((self.feature_sz + self.kernel_size) % 2) * self.target_scale * self.img_sample_sz / (
            2 * self.feature_sz)

    # -- initialisation -----------------------------------------------------------------------------
    def initialize(self, im: torch.Tensor, mask: torch.Tensor | None, box: tuple[float, float, float, float],
                   use_box: bool) -> torch.Tensor:
        """Start the object on this frame; returns its init-frame scores for the merge (H, W)."""
        h_img, w_img = im.shape[-2:]
        self.frame_num = 1
        x, y, w, h = box
        raw: torch.Tensor
        if use_box:
            bb = torch.tensor([[int(x), int(y), int(w), int(h)]], dtype=torch.int64)
            logits = self.net.box_init_logits(normalise(im.to(self.device)), bb.float().to(self.device)).cpu()
            mask = torch.sigmoid(logits)
            raw = logits[0, 0]
        else:
            assert mask is not None
            mask = mask.reshape(1, 1, h_img, w_img).float()
            raw = (mask[0, 0] - 0.5) * 200.0
        self.pos = torch.tensor([y + (h - 1) / 2, x + (w - 1) / 2], dtype=torch.float32)
        self.target_sz = torch.tensor([h, w], dtype=torch.float32)
        search_area = torch.prod(self.target_sz * self.params.search_area_scale).item()
        self.target_scale = math.sqrt(search_area) / self.img_sample_sz.prod().sqrt()
        self.base_target_sz = self.target_sz / self.target_scale
        init_pos, init_scale, shift, exp_sz = init_crop_geometry(
            self.pos, self.target_scale, self.img_sample_sz, (h_img, w_img))
        out_hw = (int(self.img_sample_sz[0]), int(self.img_sample_sz[1]))
        self.init_geom = (init_pos, init_scale, torch.tensor(shift), exp_sz)
        patch = init_crop(im, init_pos, init_scale, shift, exp_sz, out_hw)
        mask_crop = init_crop(mask, init_pos, init_scale, shift, exp_sz, out_hw, is_mask=True)
        _, x_feat = self._features(patch)
        mem = self.params.sample_memory_size
        self.samples = x_feat.new_zeros(mem, 1, *x_feat.shape[-3:])
        self.masks = x_feat.new_zeros(mem, 1, *out_hw)
        self.samples[0] = x_feat
        self.masks[0] = mask_crop[0].to(self.device)
        self.weights = torch.zeros(mem)
        self.weights[0] = 1.0
        self.num_stored = 1
        self.prev_replace = None
        self.protected = [0] if self._floor_enabled else []
        self.weight_floor_slots = [0]
        self.tau = self._learn(self.samples[:1], self.masks[:1], None, self.params.net_opt_iter, None)
        return raw

    @property
    def _floor_enabled(self) -> bool:
        return bool(self.params.init_samples_minimum_weight)

    # -- memory (spec §6.8) -------------------------------------------------------------------------
    def _replace_slot(self) -> int:
        if self.num_stored < self.weights.shape[0]:
            return self.num_stored
        w = self.weights.clone()
        w[self.protected] = float("inf")
        return int(torch.argmin(w).item())

    def _insert(self, x: torch.Tensor, mask_crop: torch.Tensor, lr: float) -> int:
        """Add a sample with the reference's weighting and replacement; returns its slot."""
        sw = self.weights
        slot = self._replace_slot()
        if self.prev_replace is None:
            if self.params.lower_init_weight:
                sw[slot] = 1
            else:
                sw /= 1 - lr
                sw[slot] = lr
        else:
            sw[slot] = sw[self.prev_replace] / (1 - lr)
        sw /= sw.sum()
        floor = self.params.init_samples_minimum_weight
        if floor:
            idx = self.weight_floor_slots
            rest = torch.ones_like(sw, dtype=torch.bool)
            rest[idx] = False
            if sw[idx].sum() < floor:
                sw /= floor + sw[rest].sum()
                sw[idx] = floor / len(idx)
        self.prev_replace = slot
        self.samples[slot] = x
        self.masks[slot] = mask_crop[0].to(self.device)
        self.num_stored = min(self.num_stored + 1, sw.shape[0])
        return slot

    def _optimise(self, num_iter: int) -> None:
        n = self.num_stored
        self.tau = self._learn(self.samples[:n], self.masks[:n], self.weights[:n], num_iter, self.tau)

    # -- tracking (spec §6.7) -----------------------------------------------------------------------
    def track(self, im: torch.Tensor, prev_prob: torch.Tensor) -> torch.Tensor:
        """Segment this frame given the object's merged probability on the previous frame -> scores (H, W)."""
        self.frame_num += 1
        h_img, w_img = im.shape[-2:]
        prob = prev_prob.reshape(1, 1, h_img, w_img)
        if self.frame_num > 2 and self.params.update_target_model:
            mask_crop, _ = sample_patch(prob, self.prev_pos, self.prev_scale * self.img_sample_sz,
                                        self.img_sample_sz, mode="inside_major", is_mask=True)
            if self.frame_num % self.params.train_sample_interval == 0:
                self._insert(self.prev_test_x, mask_crop, self.params.learning_rate)
            if (self.frame_num - 1) % self.params.train_skipping == 0:
                self._optimise(self.params.net_opt_update_iter)
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
        centre = self._centered_pos()
        patch, coords = sample_patch(im, centre, self.target_scale * self.img_sample_sz, self.img_sample_sz,
                                     mode="inside_major")
        feats, x_feat = self._features(patch)
        sample_pos, sample_scale = sample_location(coords, self.img_sample_sz)
        logits, _ = self.net.segment(self.tau, x_feat, feats)
        self.prev_pos = centre
        self.prev_scale = self.target_scale
        self.prev_test_x = x_feat
        return paste_scores(logits.cpu(), (h_img, w_img), sample_pos, sample_scale)

    def correct(self, mask: torch.Tensor) -> None:
        """A user-corrected mask of the last frame becomes a permanent sample, then A re-fits.

        On the object's first frame the correction replaces the initial mask and A starts again.
        """
        h_img, w_img = mask.shape[-2:]
        m = mask.reshape(1, 1, h_img, w_img).float()
        if self.frame_num <= 1:
            pos, scale, shift, exp_sz = self.init_geom
            out_hw = (int(self.img_sample_sz[0]), int(self.img_sample_sz[1]))
            self.masks[0] = init_crop(m, pos, scale, shift.tolist(), exp_sz, out_hw, is_mask=True)[0].to(self.device)
            self.tau = self._learn(self.samples[:1], self.masks[:1], None, self.params.net_opt_iter, None)
            return
        free = [i for i in range(self.weights.shape[0]) if i not in self.protected]
        if len(free) < 2:
            raise InputError(f"object {self.object_id}: too many corrections for the few-shot memory")
        crop, _ = sample_patch(m, self.prev_pos, self.prev_scale * self.img_sample_sz, self.img_sample_sz,
                               mode="inside_major", is_mask=True)
        slot = self._insert(self.prev_test_x, crop, self.params.learning_rate)
        self.protected.append(slot)
        self.weight_floor_slots.append(slot)
        self._optimise(self.params.net_opt_update_iter)

    # -- state ----------------------------------------------------------------------------------------
    _TENSORS = ("pos", "target_sz", "target_scale", "base_target_sz", "prev_pos", "prev_scale", "tau",
                "weights", "prev_test_x")
    _GEOM = ("init_pos", "init_scale", "init_shift", "init_exp_sz")

    def state(self) -> dict:
        d = {k: getattr(self, k).cpu() for k in self._TENSORS if hasattr(self, k)}
        d.update(zip(self._GEOM, self.init_geom, strict=True))
        d["samples"] = self.samples[: self.num_stored].cpu()
        d["masks"] = self.masks[: self.num_stored].cpu()
        d["meta"] = {"object_id": self.object_id, "frame_num": self.frame_num, "num_stored": self.num_stored,
                     "prev_replace": self.prev_replace, "protected": list(self.protected),
                     "weight_floor_slots": list(self.weight_floor_slots), "memory": int(self.weights.shape[0])}
        return d

    def load(self, d: dict) -> None:
        meta = d["meta"]
        self.frame_num = meta["frame_num"]
        self.num_stored = meta["num_stored"]
        self.prev_replace = meta["prev_replace"]
        self.protected = list(meta["protected"])
        self.weight_floor_slots = list(meta["weight_floor_slots"])
        for k in self._TENSORS:
            if k in d:
                v = d[k]
                setattr(self, k, v.to(self.device) if k in ("tau", "prev_test_x") else v)
        self.init_geom = tuple(d[k] for k in self._GEOM)
        s, m = d["samples"], d["masks"]
        mem = meta["memory"]
        self.samples = s.new_zeros(mem, *s.shape[1:]).to(self.device)
        self.masks = m.new_zeros(mem, *m.shape[1:]).to(self.device)
        self.samples[: s.shape[0]] = s.to(self.device)
        self.masks[: m.shape[0]] = m.to(self.device)


def _to_tensor(frame: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float (1, 3, H, W) in 0..255, as the reference's numpy_to_torch."""
    return torch.from_numpy(frame.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)  # one copy, always writable


class Tracker:
    """Multi-object LWL tracker with explicit, exportable state (spec §6.11)."""

    def __init__(self, net: LWLNet, params: TrackerParams, crop_hw: tuple[int, int],
                 device: torch.device | str = "cpu") -> None:
        if crop_hw[0] % 16 or crop_hw[1] % 16 or min(crop_hw) < 32:
            raise InputError(f"crop size {crop_hw[0]}x{crop_hw[1]} must be multiples of 16, at least 32")
        self.net = net
        self.params = params
        self.crop_hw = (int(crop_hw[0]), int(crop_hw[1]))
        self.device = torch.device(device)
        self.targets: dict[int, _Target] = {}
        self.frame_index = -1
        self.frame_hw: tuple[int, int] | None = None
        self._last_frame: np.ndarray | None = None
        self._raw: dict[int, torch.Tensor] = {}  # per-object scores of the last frame
        self._prob: dict[int, torch.Tensor] = {}  # per-object merged probabilities of the last frame

    @property
    def object_ids(self) -> list[int]:
        return list(self.targets)

    # -- input checks -------------------------------------------------------------------------------
    def _check_frame(self, frame: np.ndarray) -> None:
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError("frame must be an RGB uint8 array of shape (H, W, 3)")
        if self.frame_hw is not None and frame.shape[:2] != self.frame_hw:
            raise InputError(f"frame size {frame.shape[1]}x{frame.shape[0]} differs from the video's "
                             f"{self.frame_hw[1]}x{self.frame_hw[0]}")

    def _new_objects(self, mask: np.ndarray | None, boxes: dict[int, tuple] | None,
                     hw: tuple[int, int]) -> list[tuple[int, np.ndarray | None, tuple]]:
        new: list[tuple[int, np.ndarray | None, tuple]] = []
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != hw:
                raise InputError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the frame size "
                                 f"{hw[1]}x{hw[0]}")
            ids = [int(i) for i in np.unique(mask) if i not in (0, 255)]
            if not ids and not boxes:
                raise InputError("mask is empty: it has no object pixels")
            for oid in ids:
                if oid in self.targets:
                    continue
                m = (mask == oid).astype(np.uint8)
                new.append((oid, m, box_from_label(m)))
        for oid, box in (boxes or {}).items():
            oid = int(oid)
            if oid in self.targets or any(o == oid for o, _, _ in new):
                raise InputError(f"object {oid} is already tracked")
            if not 1 <= oid <= 254:
                raise InputError(f"object id {oid} must be between 1 and 254")
            new.append((oid, None, _check_box(box, hw)))
        return new

    # -- main loop ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None,
             boxes: dict[int, tuple[float, float, float, float]] | None = None) -> FrameResult:
        """Segment the next frame; objects in `mask`/`boxes` that are not tracked yet start here."""
        self._check_frame(frame)
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        new = self._new_objects(mask, boxes, hw)
        if not self.targets and not new:
            raise InputError("the first frame needs a mask or boxes for at least one object")
        im = _to_tensor(frame)
        self.frame_hw = hw
        self.frame_index += 1
        raw = {oid: t.track(im, self._prob[oid]) for oid, t in self.targets.items()}
        self._last_frame = frame
        self._raw = raw
        self._start(im, new)
        return self._merge()

    def _start(self, im: torch.Tensor, new: list[tuple[int, np.ndarray | None, tuple]]) -> None:
        use_box_always = self.params.init_with_box and self.net.box_label_encoder is not None
        for oid, m, box in new:
            use_box = m is None or use_box_always
            if use_box and self.net.box_label_encoder is None:
                raise InputError("these weights have no box encoder: give a mask instead of a box")
            t = _Target(oid, self.net, self.params, self.crop_hw, self.device)
            mt = torch.from_numpy(m).float() if m is not None else None
            self._raw[oid] = t.initialize(im, mt, _safe_box(box), use_box)
            self.targets[oid] = t

    @torch.inference_mode()
    def add_objects(self, mask: np.ndarray | None = None,
                    boxes: dict[int, tuple[float, float, float, float]] | None = None) -> FrameResult:
        """Start new objects on the frame last passed to `step`."""
        if self._last_frame is None or self.frame_hw is None:
            raise InputError("no frame yet: pass the first frame to step() with the objects")
        new = self._new_objects(mask, boxes, self.frame_hw)
        if not new:
            raise InputError("no new object in the given mask/boxes")
        self._start(_to_tensor(self._last_frame), new)
        return self._merge()

    @torch.inference_mode()
    def correct(self, mask: np.ndarray) -> FrameResult:
        """User correction of the last frame: each object id in `mask` gets that mask as a permanent sample."""
        if self._last_frame is None or self.frame_hw is None:
            raise InputError("no frame to correct yet")
        mask = np.asarray(mask)
        if mask.shape != self.frame_hw:
            raise InputError(f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the frame size "
                             f"{self.frame_hw[1]}x{self.frame_hw[0]}")
        ids = [int(i) for i in np.unique(mask) if i not in (0, 255)]
        if not ids:
            raise InputError("correction mask is empty: it has no object pixels")
        unknown = [i for i in ids if i not in self.targets]
        if unknown:
            raise InputError(f"unknown object id(s) {unknown}: tracked objects are {self.object_ids}")
        corrected = torch.zeros(self.frame_hw, dtype=torch.bool)
        for oid in ids:
            m = torch.from_numpy((mask == oid).astype(np.uint8)).float()
            self.targets[oid].correct(m)
            self._raw[oid] = (m - 0.5) * 200.0
            corrected |= m.bool()
        for oid in self.targets:
            if oid not in ids:
                self._raw[oid] = torch.where(corrected, torch.full_like(self._raw[oid], -100.0), self._raw[oid])
        return self._merge()

    def remove_object(self, object_id: int) -> None:
        if object_id not in self.targets:
            raise InputError(f"unknown object id {object_id}: tracked objects are {self.object_ids}")
        del self.targets[object_id]
        self._raw.pop(object_id, None)
        self._prob.pop(object_id, None)

    def _merge(self) -> FrameResult:
        ids = list(self.targets)
        probs = soft_aggregate(torch.stack([self._raw[i] for i in ids]))
        label_ids = np.array([0, *ids], dtype=np.uint8)
        labels = label_ids[probs.numpy().argmax(axis=0)]
        self._prob = {oid: probs[k + 1] for k, oid in enumerate(ids)}
        objects = {}
        for k, oid in enumerate(ids):
            p = probs[k + 1].numpy()
            sel = labels == oid
            area = int(sel.sum())
            box = None
            if area > 0 and p.sum() >= 1e-6:
                pos, sz = mask_state(probs[k + 1], self.params.seg_to_bb_sz_factor)
                cy, cx, hh, ww = float(pos[0]), float(pos[1]), float(sz[0]), float(sz[1])
                box = (cx - (ww - 1) / 2, cy - (hh - 1) / 2, ww, hh)
            score = float(p[sel].mean()) if area else 0.0
            objects[oid] = ObjectResult(prob=p, box=box, score=score, area=area)
        return FrameResult(self.frame_index, labels, objects)

    # -- export / import --------------------------------------------------------------------------------
    def export_state(self) -> bytes:
        """Everything needed to continue this video elsewhere (torch.save of tensors and plain data)."""
        state = {
            "version": STATE_VERSION,
            "crop_hw": list(self.crop_hw),
            "params": self.params.to_dict(),
            "frame_index": self.frame_index,
            "frame_hw": list(self.frame_hw) if self.frame_hw else None,
            "last_frame": torch.from_numpy(self._last_frame) if self._last_frame is not None else None,
            "raw": {int(k): v for k, v in self._raw.items()},
            "prob": {int(k): v for k, v in self._prob.items()},
            "targets": [t.state() for t in self.targets.values()],
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    @classmethod
    def restore(cls, net: LWLNet, blob: bytes, device: torch.device | str = "cpu") -> Tracker:
        """Inverse of export_state (weights-only unpickling: the blob cannot run code)."""
        try:
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"tracker state cannot be read: {exc}") from None
        if state.get("version") != STATE_VERSION:
            raise InputError(f"tracker state version {state.get('version')} is not supported")
        tr = cls(net, TrackerParams.from_dict(state["params"]), tuple(state["crop_hw"]), device)
        tr.frame_index = state["frame_index"]
        tr.frame_hw = tuple(state["frame_hw"]) if state["frame_hw"] else None
        lf = state["last_frame"]
        tr._last_frame = lf.numpy() if lf is not None else None
        tr._raw = dict(state["raw"])
        tr._prob = dict(state["prob"])
        for d in state["targets"]:
            t = _Target(d["meta"]["object_id"], net, tr.params, tr.crop_hw, tr.device)
            t.load(d)
            tr.targets[t.object_id] = t
        return tr


def _check_box(box: tuple, hw: tuple[int, int]) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"box {box!r} must be four numbers x,y,w,h") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise InputError(f"box {box!r} needs positive width and height")
    if x < 0 or y < 0 or x + w > hw[1] or y + h > hw[0]:
        raise InputError(f"box {x:g},{y:g},{w:g},{h:g} lies outside the {hw[1]}x{hw[0]} frame")
    return (x, y, w, h)


def _safe_box(box: tuple) -> tuple[float, float, float, float]:
    """Width/height of at least 1 so a one-pixel-wide object does not give a zero scale (spec §6.6)."""
    x, y, w, h = box
    return (x, y, max(w, 1.0), max(h, 1.0))
