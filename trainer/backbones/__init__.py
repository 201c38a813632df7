"""Pretrained feature extractors shared by the detectors."""
from trainer.backbones.efficientnet_lite import (STAGE_CHANNELS, STAGE_STRIDES, VARIANTS, EfficientNetLite,
                                                 EfficientNetLite0, load_imagenet_weights, normalize_for_lite,
                                                 pretrained_lite, pretrained_lite0, stage_channels,
                                                 to_three_channels, weights_description)

__all__ = ["EfficientNetLite", "EfficientNetLite0", "STAGE_CHANNELS", "STAGE_STRIDES", "VARIANTS",
           "load_imagenet_weights", "normalize_for_lite", "pretrained_lite", "pretrained_lite0", "stage_channels",
           "to_three_channels", "weights_description"]
