"""The contract between the model and everything else (CLI, service, evaluation).

`load_model` gives a `Model`; a `Model` makes `Tracker`s (one per video) and restores exported
ones. See docs/ARCHITECTURE.md for the whole contract.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import build_from_weights, read_weights
from model.config import NetConfig, TrackerParams, parse_size
from model.errors import InputError
from model.fuse import fuse_batchnorm
from model.network import LWLNet
from model.profiles import DEFAULT_PROFILE, PROFILES, get_profile
from model.threads import set_cpu_threads
from model.tracker import FrameResult, ObjectResult, Tracker, step_many
from model.video import Annotation, SegmentedFrame, segment_video

BUNDLED_WEIGHTS = get_profile(None).weights  # the default profile's weights

__all__ = ["FrameResult", "Model", "ObjectResult", "Tracker", "load_model", "resolve_device", "parse_size",
           "step_many", "BUNDLED_WEIGHTS", "DEFAULT_PROFILE", "PROFILES", "load_models"]


def resolve_device(device: str | None) -> torch.device:
    """'auto'/None -> CUDA when available, else CPU; TF32 off so GPU masks follow the float32 reference."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device} requested but CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return dev


@dataclass
class Model:
    """A loaded network with its default tracker parameters."""

    net: LWLNet
    config: NetConfig
    params: TrackerParams
    device: torch.device
    name: str
    profile: str | None = None  # the bundled profile this is, None for a weights file given by path
    weights_hash: str = ""  # weights_digest of the weights as loaded: an exported state names it

    @property
    def default_crop_size(self) -> tuple[int, int]:
        return tuple(self.config.crop_size)  # type: ignore[return-value]

    @property
    def exact(self) -> bool:
        """Exact mode: the reference's operators in its order (load_model(exact=True))."""
        return self.net.exact

    @property
    def has_box_encoder(self) -> bool:
        return self.net.box_label_encoder is not None

    def new_tracker(self, crop_size: tuple[int, int] | None = None, params: TrackerParams | None = None) -> Tracker:
        return Tracker(self.net, params or self.params, crop_size or self.default_crop_size, self.device,
                       self.name, self.weights_hash)

    def restore_tracker(self, blob: bytes) -> Tracker:
        """A tracker from `Tracker.export_state` bytes (a notebook's or the service's `GET .../state`);
        InputError for a state of another model (name or weights), another version, or a damaged one."""
        return Tracker.restore(self.net, blob, self.device, model=(self.name, self.weights_hash))

    def state_bytes(self, frame_hw: tuple[int, int], n_objects: int, crop_size: tuple[int, int] | None = None,
                    memory_size: int | None = None) -> int:
        """Upper bound of what a tracker of this model holds once its few-shot memory is full, in bytes.

        Services admit sessions by it before any model work. Per object: `memory_size` samples of
        target-model features (C x h x w at stride 16) with their crop-sized masks, their cached
        label/weight encodings and scores under the current filter (3 x D x h x w), the last features
        with their scores, the target-model filter, and two frame-sized float maps (last scores and
        probabilities); per tracker, the last frame (uint8 RGB).
        """
        crop_h, crop_w = crop_size or self.default_crop_size
        hw = (crop_h // 16) * (crop_w // 16)
        c, d, k = self.config.tm_feature_dim, self.config.num_filters, self.config.filter_size
        slots = memory_size or self.params.sample_memory_size
        per_object = 4 * (slots * (c * hw + crop_h * crop_w + 3 * d * hw) + (c + d) * hw + d * c * k * k
                          + 2 * frame_hw[0] * frame_hw[1]) + 4096  # 4096: small tensors and bookkeeping
        return n_objects * per_object + 3 * frame_hw[0] * frame_hw[1]

    def segment_video(self, source: str | Path, mask: str | Path | np.ndarray | None = None,
                      boxes: dict[int, tuple[float, float, float, float]] | None = None, init_frame: int = 0,
                      **kw: object) -> Iterator[SegmentedFrame]:
        """Segment a video file or a folder of frames from a mask and/or boxes on frame `init_frame`; yields
        every frame in order (model.video.segment_video, which takes more options)."""
        from model.media import FrameSource, read_label_png

        m = read_label_png(mask) if isinstance(mask, (str, Path)) else mask
        return segment_video(self, FrameSource(source), {init_frame: Annotation(m, boxes)}, **kw)

    @classmethod
    def from_net(cls, net: LWLNet, config: NetConfig, preset: str = "lwl_ytvos", device: str | torch.device = "cpu",
                 name: str = "in-memory") -> Model:
        """A Model around a network already in memory (the trainer validates without writing a file)."""
        return cls(net, config, TrackerParams.preset(preset), torch.device(device), name,
                   weights_hash=weights_digest(net.state_dict()))


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of a network's weights (names, shapes, dtypes, bytes), taken before BatchNorms are
    folded: the same weights file gives the same hash in exact and fast mode."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def exact_from_env() -> bool:
    """LWL_EXACT=1 (or true/yes/on) asks for exact mode where a caller does not say."""
    return os.environ.get("LWL_EXACT", "").strip().lower() in ("1", "true", "yes", "on")


def load_model(weights: str | Path | None = None, device: str | None = None, preset: str | None = None,
               exact: bool | None = None, threads: int | None = 0, profile: str | None = None) -> Model:
    """Load official `.pth` or our `.safetensors` weights, or (weights None) a bundled profile: `profile`
    "fast" (the default) or "accurate" (model/profiles.py).

    `exact` (None: LWL_EXACT): the reference's operators in the reference's order, for masks equal to the
    authors' tracker bit for bit (LWLNet.set_exact); otherwise BatchNorms are folded and the fast kernels
    run. `threads`: torch CPU threads for the calling thread, 0 = the cores this process may use
    (model/threads.py), None = leave torch's setting alone.
    """
    if threads is not None:
        set_cpu_threads(threads)
    exact = exact_from_env() if exact is None else exact
    if weights and profile:
        raise InputError("a profile names a bundled model: give either weights or a profile, not both")
    prof = None if weights else get_profile(profile)
    path = Path(weights) if weights else prof.weights
    if prof is not None and not path.is_file():
        raise InputError(f"the bundled {prof.name} model is missing ({path}); pass weights explicitly")
    w = read_weights(path)
    digest = weights_digest(w.state_dict)
    dev = resolve_device(device)
    net = build_from_weights(w).to(dev)
    if w.meta.get("ablation"):  # an ablation checkpoint needs its module swap, or untrained parts would run
        from model.ablation import apply_ablation

        apply_ablation(net, w.meta["ablation"])
    net.eval()
    if exact:
        net.set_exact()
    else:
        fuse_batchnorm(net)  # inference only: a Model is never trained (the trainer builds its own net)
    params = TrackerParams.preset(preset or w.tracker_preset)
    if prof is not None:
        params = params.with_(**prof.params)
    return Model(net, w.config, params, dev, prof.name if prof else path.stem, prof.name if prof else None, digest)


def load_models(weights: str | Path | None = None, device: str | None = None, exact: bool | None = None,
                threads: int | None = 0) -> dict[str, Model]:
    """What a service serves, by name, the default first: the one model of `weights`, or (None) every
    bundled profile whose weights are present, so a session or a job can ask for either by name."""
    if weights:
        m = load_model(weights, device, exact=exact, threads=threads)
        return {m.name: m}
    names = [DEFAULT_PROFILE] + [p for p in PROFILES if p != DEFAULT_PROFILE and PROFILES[p].weights.is_file()]
    return {p: load_model(device=device, exact=exact, threads=threads, profile=p) for p in names}


# ============================================================================ the service's door
# Everything service/ uses of the model, in one block (issue 23): service/ imports `model.api` (this
# module), `model.errors` and, in processes that must not load torch (the api, the SDK), `model.lite`,
# the torch-free half re-exported here. Nothing in service/ imports another module of model/.

from model.lite import (  # noqa: E402 - the torch-free half of the contract (model.lite)
    DAVIS_PALETTE,
    PNG_RLE,
    RESULT_FORMATS,
    FrameSource,
    ResultFormat,
    clip_box,
    encode_label_png,
    job_outputs,
    mask_ids,
    object_ids,
    palette,
    probe_video,
    read_image,
    read_label_png,
    read_state_header,
    register_cli,
    rle_decode,
    rle_encode,
    write_label_png,
)
from model.threads import resolve_threads  # noqa: E402 (set_cpu_threads: imported above)

__all__ += ["Annotation", "DAVIS_PALETTE", "PNG_RLE", "RESULT_FORMATS", "FrameSource", "ResultFormat",
            "SegmentedFrame", "clip_box", "encode_label_png", "job_outputs", "mask_ids", "object_ids", "palette",
            "probe_video", "read_image", "read_label_png", "read_state_header", "register_cli", "resolve_threads",
            "rle_decode", "rle_encode", "segment_video", "set_cpu_threads", "write_label_png"]
