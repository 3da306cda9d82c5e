"""Weights on disk: the authors' pytracking `.pth` files and the project's safetensors format.

Official files are read with PyTorch's weights-only unpickler: the few foreign classes that ltr
pickles next to the weights (`NetConstructor`, `Settings`, stats meters) are replaced by empty
stand-ins, so no code from the file is ever executed and pytracking need not be installed.
Our own format is one `.safetensors` file whose header metadata holds the JSON config.
"""

from __future__ import annotations

import importlib
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.config import NetConfig
from model.errors import CheckpointError
from model.network import LWLNet, build_network

FORMAT = "lwl-vos/1"
_FOREIGN = ("ltr.", "pytracking.", "dlframework.")
_ALLOWED_REAL = ("numpy.", "_codecs.encode")
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# Constructor arguments that decide the architecture, with the values of the released models.
_EXPECTED_KWDS = {
    "filter_size": 3, "num_filters": 16, "out_feature_dim": 512, "label_encoder_dims": (16, 32, 64),
    "use_bn_in_label_enc": False, "clf_feat_blocks": 0, "final_conv": True, "backbone_type": "mrcnn",
}


@dataclass
class LoadedWeights:
    """A network's config, its state dict, and where it came from."""

    config: NetConfig
    state_dict: dict[str, torch.Tensor]
    tracker_preset: str = "lwl_ytvos"
    meta: dict[str, Any] = field(default_factory=dict)


def _stand_in(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (), {"__module__": module, "__qualname__": name})


def _resolve_real(qualified: str) -> Any:
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _torch_load_safely(path: Path) -> Any:
    """torch.load(weights_only=True), adding inert stand-ins for ltr/pytracking classes as they turn up."""
    extra: list[Any] = []
    for _ in range(32):
        try:
            with torch.serialization.safe_globals(extra):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - classified below into one clear message
            msg = str(exc)
            m = _UNSUPPORTED.search(msg)
            if m is None:
                raise _classify(path, exc) from None
            name = m.group(1)
            if name.startswith(_FOREIGN):
                extra.append(_stand_in(name))
            elif name.startswith(_ALLOWED_REAL):
                try:
                    extra.append(_resolve_real(name))
                except (ImportError, AttributeError):
                    raise CheckpointError(f"{path}: needs {name}, which this Python cannot provide") from None
            else:
                raise CheckpointError(f"{path}: refers to foreign code '{name}'; refusing to load it") from None
    raise CheckpointError(f"{path}: too many foreign classes in the file")


def _classify(path: Path, exc: Exception) -> CheckpointError:
    """One clear line for a file torch cannot read."""
    text = str(exc)
    if zipfile.is_zipfile(path) is False and path.stat().st_size > 0 and "invalid load key" in text:
        return CheckpointError(f"{path}: not a PyTorch checkpoint (unrecognised file format)")
    if "zip archive" in text or "central directory" in text or "EOF" in text or "truncated" in text.lower():
        return CheckpointError(f"{path}: corrupt or truncated checkpoint ({text.splitlines()[0][:120]})")
    return CheckpointError(f"{path}: cannot read checkpoint ({text.splitlines()[0][:160]})")


def _check_kwds(path: Path, kwds: dict[str, Any]) -> None:
    for key, want in _EXPECTED_KWDS.items():
        if key in kwds:
            got = tuple(kwds[key]) if isinstance(kwds[key], list) else kwds[key]
            if got != want:
                raise CheckpointError(f"{path}: constructor argument {key}={got!r} differs from the supported {want!r}")


def read_pytracking(path: str | Path) -> LoadedWeights:
    """Read an official ltr checkpoint (`lwl_stage2.pth`, `lwl_boxinit.pth`) without pytracking."""
    path = Path(path)
    obj = _torch_load_safely(path)
    if not isinstance(obj, dict) or "net" not in obj:
        raise CheckpointError(f"{path}: not an ltr checkpoint (no 'net' entry)")
    sd = obj["net"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: 'net' is not a state dict of tensors")
    constructor = obj.get("constructor")
    kwds = dict(getattr(constructor, "kwds", None) or {})
    fun_module = str(getattr(constructor, "fun_module", "") or "")
    _check_kwds(path, kwds)
    is_box = any(k.startswith("box_label_encoder.") for k in sd) or "box_net" in fun_module
    cfg = NetConfig.official_boxinit() if is_box else NetConfig.official_stage2()
    meta = {"source": str(path.name), "net_type": obj.get("net_type"), "epoch": obj.get("epoch"),
            "fun_module": fun_module or None}
    return LoadedWeights(cfg, dict(sd), "lwl_boxinit" if is_box else "lwl_ytvos", meta)


def save_model(path: str | Path, net_or_sd: LWLNet | dict[str, torch.Tensor], cfg: NetConfig,
               tracker_preset: str = "lwl_ytvos", extra_meta: dict[str, Any] | None = None) -> Path:
    """Write the project's format: one safetensors file, JSON config in its header."""
    path = Path(path)
    sd = net_or_sd.state_dict() if isinstance(net_or_sd, torch.nn.Module) else net_or_sd
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    header = {"format": FORMAT, "net": cfg.to_dict(), "tracker_preset": tracker_preset, **(extra_meta or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"lwl": json.dumps(header)})
    return path


def read_safetensors(path: str | Path) -> LoadedWeights:
    """Read the project's format."""
    path = Path(path)
    try:
        sd = load_file(str(path))
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
    raw = (header.get("__metadata__") or {}).get("lwl")
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file without an lwl-vos config (not written by lwl-vos)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported format {meta.get('format')!r} (expected {FORMAT})")
    try:
        cfg = NetConfig.from_dict(meta.pop("net"))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid network config ({exc})") from None
    return LoadedWeights(cfg, sd, meta.pop("tracker_preset", "lwl_ytvos"), meta)


def read_weights(path: str | Path) -> LoadedWeights:
    """Either format, chosen by content (safetensors header or a torch file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.stat().st_size < 16:
        raise CheckpointError(f"{path}: file too small to be a checkpoint (truncated?)")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[8:9] == b"{":
        return read_safetensors(path)
    return read_pytracking(path)


def build_from_weights(w: LoadedWeights) -> LWLNet:
    """Network for the weights, loaded with strict=True."""
    net = build_network(w.config)
    try:
        net.load_state_dict(w.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(first[:3])[:300]
        raise CheckpointError(f"weights do not fit the {w.config.backbone} network: {detail}") from None
    return net.eval()


def convert(src: str | Path, dst: str | Path) -> Path:
    """`lwl convert`: any readable checkpoint -> our safetensors format."""
    w = read_weights(src)
    build_from_weights(w)  # validate before writing anything
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        dst = dst.with_name(dst.name + ".safetensors")
    return save_model(dst, w.state_dict, w.config, w.tracker_preset, {"converted_from": Path(src).name, **w.meta})
