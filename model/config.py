"""Architecture and tracker configuration as plain dataclasses (serialised as JSON with the weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from model.backbone import LITE_STAGES, lite_channels
from model.errors import InputError


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W): a crop size for the network, sides multiples of 16 and at least 32."""
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise InputError(f"size {text!r} must look like HxW, e.g. 240x432") from None
    if h % 16 or w % 16 or h < 32 or w < 32:
        raise InputError(f"size {text!r}: height and width must be multiples of 16 and at least 32")
    return h, w


@dataclass(frozen=True)
class NetConfig:
    """Shape of an LWL network; the official ResNet-50 models and the compact CPU model share modules."""

    backbone: str = "resnet50_mrcnn"  # "resnet50_mrcnn" (official) | "resnet18" | "efficientnet_lite0|2" (CPU)
    norm: str = "bn"  # "bn" (official) | "gn" (compact option, trained from scratch)
    tm_feature_dim: int = 512  # C: target-model feature channels
    num_filters: int = 16  # D: mask-encoding channels
    filter_size: int = 3  # K
    label_encoder_dims: tuple[int, int, int] = (16, 32, 64)
    decoder_mdim: int = 64
    box_encoder_dims: tuple[int, ...] | None = None  # None: no box encoder
    crop_size: tuple[int, int] = (480, 832)  # (H, W) crop fed to the network by default
    init_filter_reg: float = 0.01
    train_optim_iter: int = 5
    bn_train: bool = False  # official: every BN in eval mode, also in training

    @property
    def layer_channels(self) -> dict[str, int]:
        """Channels of backbone layer1..layer4."""
        if self.backbone == "resnet50_mrcnn":
            return {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
        if self.backbone == "resnet18":
            return {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
        if self.backbone in LITE_STAGES:
            return lite_channels(self.backbone)
        raise ValueError(f"unknown backbone {self.backbone!r}")

    @property
    def has_box_encoder(self) -> bool:
        return self.box_encoder_dims is not None

    @classmethod
    def official_stage2(cls) -> NetConfig:
        """The network of lwl_stage2.pth."""
        return cls()

    @classmethod
    def official_boxinit(cls) -> NetConfig:
        """The network of lwl_boxinit.pth: stage 2 plus the box encoder B."""
        return cls(box_encoder_dims=(64, 64))

    @classmethod
    def compact(cls, with_box: bool = True) -> NetConfig:
        """The bundled CPU model: ResNet-18-sized backbone, smaller target features, 240x432 crops."""
        return cls(
            backbone="resnet18",
            norm="bn",
            tm_feature_dim=256,
            decoder_mdim=32,
            box_encoder_dims=(64, 64) if with_box else None,
            crop_size=(240, 432),
            bn_train=True,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown network config keys: {sorted(unknown)}")
        kw = dict(d)
        for k in ("label_encoder_dims", "box_encoder_dims", "crop_size"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)


@dataclass(frozen=True)
class TrackerParams:
    """Inference parameters. Defaults are the `lwl_ytvos` set used with lwl_stage2.pth."""

    search_area_scale: float = 5.0
    max_scale_change: tuple[float, float] = (0.95, 1.1)
    min_mask_area: float = 100.0
    seg_to_bb_sz_factor: float = 4.0
    sample_memory_size: int = 32
    learning_rate: float = 0.1
    init_samples_minimum_weight: float = 0.25
    lower_init_weight: bool = False
    train_skipping: int = 1
    train_sample_interval: int = 1
    update_target_model: bool = True
    net_opt_iter: int = 20
    net_opt_update_iter: int = 3
    init_with_box: bool = False
    image_mean: tuple[float, float, float] = field(default=(102.9801, 115.9465, 122.7717))  # B, G, R

    @classmethod
    def lwl_ytvos(cls) -> TrackerParams:
        return cls()

    @classmethod
    def lwl_boxinit(cls) -> TrackerParams:
        return cls(
            learning_rate=0.2,
            init_samples_minimum_weight=0.0,
            lower_init_weight=True,
            train_skipping=5,
            net_opt_update_iter=5,
            init_with_box=True,
        )

    @classmethod
    def preset(cls, name: str) -> TrackerParams:
        presets = {"lwl_ytvos": cls.lwl_ytvos, "lwl_boxinit": cls.lwl_boxinit}
        if name not in presets:
            raise ValueError(f"unknown tracker parameter set {name!r} (choose from {sorted(presets)})")
        return presets[name]()

    def with_(self, **kw: Any) -> TrackerParams:
        return replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrackerParams:
        kw = dict(d)
        for k in ("max_scale_change", "image_mean"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)
