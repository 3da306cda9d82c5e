"""LWL inference (paper Sec. 3.5): one `Target` per object (model/target.py), soft aggregation across objects.

`Tracker` is the streaming contract: `step(frame, mask=None, boxes=None)` segments one frame and
starts the objects that appear in `mask`/`boxes`; `correct` and `add_objects` act on the last
frame; `export_state`/`restore` let another process continue with identical masks.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import torch

from model.boxes import clip_box
from model.config import TrackerParams
from model.crop import OUTSIDE, mask_state, soft_aggregate
from model.errors import InputError
from model.media import box_from_label
from model.network import LWLNet
from model.state_header import STATE_MAGIC, STATE_VERSION, pack_state_header, read_state_header
from model.target import Target, decode, extract_features


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


def _to_tensor(frame: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float (1, 3, H, W) in 0..255, as the reference's numpy_to_torch."""
    return torch.from_numpy(frame.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)  # one copy, always writable


def track_objects(items: list[tuple[Tracker, torch.Tensor]], max_batch: int = 0,
                  batch_decoder: bool = False) -> list[dict[int, torch.Tensor]]:
    """Frame scores (H, W) of every object of several trackers, each on its own frame (1, 3, H, W).

    The few-shot learner stays per object (memory, tau, window); the objects' crops go through the
    backbone together, in batches of at most `max_batch` crops (0 = all at once), grouped by network
    and crop size. The backbone gives the same numbers for a crop alone or in a batch, so the masks
    equal one-object-at-a-time stepping. The decoder does not (its convolutions sum in another order
    for a batch, ~1e-5), and a tracker feeds its masks back into its memory, so such differences grow
    over a video: it runs per object unless `batch_decoder` (docs/MODEL.md, "Batching").
    """
    work = []  # (item index, object id, target, crop coords, frame size)
    patches: dict[tuple[int, tuple[int, int]], list[int]] = {}
    crops: list[torch.Tensor] = []
    for n, (tr, im) in enumerate(items):
        for oid, t in tr.targets.items():
            t.begin_frame(tr._prob[oid])
            patch, coords = t.window.crop(im)
            patches.setdefault((id(tr.net), tr.crop_hw), []).append(len(work))
            work.append((n, oid, t, coords, (im.shape[-2], im.shape[-1])))
            crops.append(patch)
    out: list[dict[int, torch.Tensor]] = [{} for _ in items]
    for members in patches.values():
        step = max_batch if max_batch > 0 else len(members)
        if work[members[0]][2].net.exact:  # a batch of crops sums in another order than one crop alone
            step = 1
        for i in range(0, len(members), step):
            group = members[i : i + step]
            net, device = work[group[0]][2].net, work[group[0]][2].device
            feats, x = extract_features(net, torch.cat([crops[k] for k in group]), device)
            encs = [work[k][2].learner.apply(x[j : j + 1]) for j, k in enumerate(group)]
            if batch_decoder:
                logits = decode(net, torch.cat(encs), feats, x)
            else:
                logits = torch.cat([decode(net, enc, {name: f[j : j + 1] for name, f in feats.items()}, x[j : j + 1])
                                    for j, enc in enumerate(encs)])
            for j, k in enumerate(group):
                n, oid, t, coords, hw = work[k]
                out[n][oid] = t.finish_frame(logits[j : j + 1], coords, x[j : j + 1], encs[j], hw)
    return out


@torch.inference_mode()
def step_many(items: list[tuple[Tracker, np.ndarray]], max_batch: int = 0,
              batch_decoder: bool = False) -> list[FrameResult]:
    """The next frame of several trackers (sessions) at once; each result equals `tracker.step(frame)`
    up to float summation order. Objects cannot start here: frames with new objects go to `step`."""
    ims = []
    for tr, frame in items:
        tr.check_frame(frame)
        if not tr.targets:
            raise InputError("the first frame needs a mask or boxes for at least one object")
        ims.append(_to_tensor(frame))
    if len({id(tr) for tr, _ in items}) != len(items):
        raise ValueError("step_many takes each tracker once (frames of one video must be stepped in order)")
    for tr, frame in items:
        tr.frame_hw = (int(frame.shape[0]), int(frame.shape[1]))
        tr.frame_index += 1
    raws = track_objects([(tr, im) for (tr, _), im in zip(items, ims, strict=True)], max_batch, batch_decoder)
    results = []
    for (tr, frame), raw in zip(items, raws, strict=True):
        tr._raw = raw
        tr._last_frame = frame
        results.append(tr._merge())
    return results


class Tracker:
    """Multi-object LWL tracker: one `Target` per object, merged per frame; its state can be exported."""

    def __init__(self, net: LWLNet, params: TrackerParams, crop_hw: tuple[int, int],
                 device: torch.device | str = "cpu", model_name: str = "", weights_hash: str = "") -> None:
        if crop_hw[0] % 16 or crop_hw[1] % 16 or min(crop_hw) < 32:
            raise InputError(f"crop size {crop_hw[0]}x{crop_hw[1]} must be multiples of 16, at least 32")
        self.net = net
        self.params = params
        self.crop_hw = (int(crop_hw[0]), int(crop_hw[1]))
        self.device = torch.device(device)
        self.model_name, self.weights_hash = model_name, weights_hash  # named in the exported state
        self.targets: dict[int, Target] = {}
        self.frame_index = -1
        self.frame_hw: tuple[int, int] | None = None
        self._last_frame: np.ndarray | None = None
        self._raw: dict[int, torch.Tensor] = {}  # per-object scores of the last frame
        self._prob: dict[int, torch.Tensor] = {}  # per-object merged probabilities of the last frame

    @property
    def object_ids(self) -> list[int]:
        return list(self.targets)

    # -- input checks -------------------------------------------------------------------------------
    def check_frame(self, frame: np.ndarray) -> None:
        """Raise InputError unless `frame` is an RGB uint8 (H, W, 3) array of this video's size. `step` and
        `step_many` check every frame with it before any tracker changes, so a refused frame changes nothing."""
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
            new.append((oid, None, clip_box(box, hw)))
        return new

    # -- main loop ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None,
             boxes: dict[int, tuple[float, float, float, float]] | None = None) -> FrameResult:
        """Segment the next frame; objects in `mask`/`boxes` that are not tracked yet start here."""
        self.check_frame(frame)
        hw = (int(frame.shape[0]), int(frame.shape[1]))
        new = self._new_objects(mask, boxes, hw)
        if not self.targets and not new:
            raise InputError("the first frame needs a mask or boxes for at least one object")
        im = _to_tensor(frame)
        self.frame_hw = hw
        self.frame_index += 1
        self._raw = track_objects([(self, im)])[0]
        self._last_frame = frame
        self._start(im, new)
        return self._merge()

    def _start(self, im: torch.Tensor, new: list[tuple[int, np.ndarray | None, tuple]]) -> None:
        use_box_always = self.params.init_with_box and self.net.box_label_encoder is not None
        for oid, m, box in new:
            use_box = m is None or use_box_always
            if use_box and self.net.box_label_encoder is None:
                raise InputError("these weights have no box encoder: give a mask instead of a box")
            t = Target(oid, self.net, self.params, self.crop_hw, self.device)
            mt = torch.from_numpy(m).float() if m is not None else None
            self._raw[oid] = t.initialize(im, mt, box, use_box)
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
                self._raw[oid] = torch.where(corrected, torch.full_like(self._raw[oid], OUTSIDE), self._raw[oid])
        return self._merge()

    def remove_object(self, object_id: int) -> FrameResult:
        """Stop tracking one object; returns the last frame's result merged again without it."""
        if object_id not in self.targets:
            raise InputError(f"unknown object id {object_id}: tracked objects are {self.object_ids}")
        del self.targets[object_id]
        self._raw.pop(object_id, None)
        self._prob.pop(object_id, None)
        return self.result()

    def result(self) -> FrameResult:
        """The last frame's merged result again (a restored tracker shows where it stands)."""
        if self.frame_hw is None:
            raise InputError("no frame yet: the tracker has no result")
        if not self.targets:
            return FrameResult(self.frame_index, np.zeros(self.frame_hw, np.uint8))
        return self._merge()

    def _merge(self) -> FrameResult:
        ids = list(self.targets)
        probs = soft_aggregate(torch.stack([self._raw[i] for i in ids]))
        labels = _argmax_labels(probs.numpy(), np.array([0, *ids], dtype=np.uint8))
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
        buf = io.BytesIO()
        self.write_state(buf)
        return buf.getvalue()

    def write_state(self, fp: BinaryIO) -> None:
        """export_state into a seekable binary file: the header (model.state_header) then the torch payload,
        written without zip CRCs: a service snapshots a session every few frames (tens of MB), and the
        checksums were a fifth of that time; the reader does not need them. The header's room is reserved
        before the payload (its length is known only after), so the payload is written once."""
        head = {"model": self.model_name, "weights": self.weights_hash, "crop_hw": list(self.crop_hw),
                "frame_hw": list(self.frame_hw) if self.frame_hw else None, "objects": self.object_ids,
                "frame_index": self.frame_index}
        start = fp.tell()
        room = len(pack_state_header({**head, "payload_bytes": 10**15}))
        fp.write(bytes(room))
        crc = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(False)
        try:
            torch.save(self._state_dict(), fp)
        finally:
            torch.serialization.set_crc32_options(crc)
        end = fp.tell()
        fp.seek(start)
        fp.write(pack_state_header({**head, "payload_bytes": end - start - room}, room - len(STATE_MAGIC) - 4))
        fp.seek(end)

    def _state_dict(self) -> dict:
        last = self._last_frame
        return {
            "version": STATE_VERSION,
            "crop_hw": list(self.crop_hw),
            "params": self.params.to_dict(),
            "frame_index": self.frame_index,
            "frame_hw": list(self.frame_hw) if self.frame_hw else None,
            "last_frame": torch.from_numpy(np.array(last)) if last is not None else None,
            "raw": {int(k): v for k, v in self._raw.items()},
            "prob": {int(k): v for k, v in self._prob.items()},
            "targets": [t.to_state() for t in self.targets.values()],
        }

    @classmethod
    def restore(cls, net: LWLNet, blob: bytes, device: torch.device | str = "cpu",
                model: tuple[str, str] | None = None) -> Tracker:
        """Inverse of export_state (weights-only unpickling: the blob cannot run code). `model` (name,
        weights hash): a state made by another model is refused before its payload is read."""
        head, start = read_state_header(blob)
        if model is not None and (head["model"], head["weights"]) != tuple(model):
            raise InputError(f"tracker state is of model {head['model']!r} (weights {head['weights']}), not of "
                             f"this model {model[0]!r} (weights {model[1]}): restore it with the model that made it")
        state = _read_state(memoryview(blob)[start:])
        try:
            tr = cls._from_state(net, state, device)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError, RuntimeError) as exc:
            raise InputError(f"tracker state is incomplete or damaged ({type(exc).__name__}: {exc})") from None
        seen = [list(tr.crop_hw), list(tr.frame_hw) if tr.frame_hw else None, tr.object_ids, tr.frame_index]
        if seen != [head["crop_hw"], head["frame_hw"], head["objects"], head["frame_index"]]:
            raise InputError("tracker state is damaged: its payload does not match its header")
        tr.model_name, tr.weights_hash = head["model"], head["weights"]
        return tr

    @classmethod
    def _from_state(cls, net: LWLNet, state: dict, device: torch.device | str) -> Tracker:
        tr = cls(net, TrackerParams.from_dict(state["params"]), tuple(state["crop_hw"]), device)
        tr.frame_index = state["frame_index"]
        tr.frame_hw = tuple(state["frame_hw"]) if state["frame_hw"] else None
        lf = state["last_frame"]
        tr._last_frame = lf.numpy() if lf is not None else None
        tr._raw = dict(state["raw"])
        tr._prob = dict(state["prob"])
        for d in state["targets"]:
            t = Target.from_state(d, net, tr.params, tr.crop_hw, tr.device)
            tr.targets[t.object_id] = t
        return tr


def _argmax_labels(probs: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """label_ids[probs.argmax(axis=0)], ties to the first channel as argmax does, by one comparison per
    channel: numpy's argmax over the leading axis of a (K+1, H, W) array took 22 ms on a 1080p frame."""
    best = probs[0].copy()
    labels = np.full(best.shape, label_ids[0], dtype=np.uint8)
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        labels[better] = label_ids[k]
        np.maximum(best, probs[k], out=best)
    return labels


def _read_state(blob: bytes | memoryview) -> dict:
    """Unpickle an exported state (tensors and plain data only) and check that this version can read it."""
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"tracker state cannot be read: {exc}") from None
    version = state.get("version") if isinstance(state, dict) else None
    if version != STATE_VERSION:
        raise InputError(f"tracker state version {version!r} is not supported: this lwl-vos reads version "
                         f"{STATE_VERSION} only (a state from another release cannot continue; start the video again)")
    return state
