"""The contract between the model and everything else (CLI, service, evaluation).

`load_model` gives a `Model`; a `Model` makes `Tracker`s (one per video) and restores exported
ones. See docs/ARCHITECTURE.md for the whole contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import build_from_weights, read_weights
from model.config import NetConfig, TrackerParams
from model.errors import InputError
from model.network import LWLNet
from model.tracker import FrameResult, ObjectResult, Tracker

BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default.safetensors"

__all__ = ["FrameResult", "Model", "ObjectResult", "Tracker", "load_model", "resolve_device", "BUNDLED_WEIGHTS"]


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


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W), multiples of 16."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"size {text!r} must look like HxW, e.g. 480x832") from None
    if h % 16 or w % 16 or h < 32 or w < 32:
        raise InputError(f"size {text!r}: height and width must be multiples of 16 and at least 32")
    return h, w


@dataclass
class Model:
    """A loaded network with its default tracker parameters."""

    net: LWLNet
    config: NetConfig
    params: TrackerParams
    device: torch.device
    name: str

    @property
    def default_crop_size(self) -> tuple[int, int]:
        return tuple(self.config.crop_size)  # type: ignore[return-value]

    @property
    def has_box_encoder(self) -> bool:
        return self.net.box_label_encoder is not None

    def new_tracker(self, crop_size: tuple[int, int] | None = None, params: TrackerParams | None = None) -> Tracker:
        return Tracker(self.net, params or self.params, crop_size or self.default_crop_size, self.device)

    def restore_tracker(self, blob: bytes) -> Tracker:
        return Tracker.restore(self.net, blob, self.device)


def load_model(weights: str | Path | None = None, device: str | None = None, preset: str | None = None) -> Model:
    """Load official `.pth` or our `.safetensors` weights (None: the bundled default model)."""
    path = Path(weights) if weights else BUNDLED_WEIGHTS
    if weights is None and not path.is_file():
        raise InputError(f"the bundled default model is missing ({path}); pass weights explicitly")
    w = read_weights(path)
    dev = resolve_device(device)
    net = build_from_weights(w).to(dev)
    params = TrackerParams.preset(preset or w.tracker_preset)
    name = "default" if weights is None else path.stem
    return Model(net, w.config, params, dev, name)
