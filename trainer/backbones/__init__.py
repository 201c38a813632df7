"""Pretrained feature extractors shared by the detectors."""
from trainer.backbones.efficientnet_lite import (STAGE_CHANNELS, STAGE_STRIDES, EfficientNetLite0,
                                                 load_imagenet_weights, normalize_for_lite, pretrained_lite0,
                                                 to_three_channels)

__all__ = ["EfficientNetLite0", "STAGE_CHANNELS", "STAGE_STRIDES", "load_imagenet_weights",
           "normalize_for_lite", "pretrained_lite0", "to_three_channels"]
