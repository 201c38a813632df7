"""The LAMP convolutional autoencoder, as plain ``nn.Module``s.

``LampAutoencoder`` maps an image in [0, 1] to its reconstruction.
``LampDetector`` wraps it with the anomaly-map generator and the image-score
pooling; its output is the typed ``LampOutput`` whose field names become the
ONNX output names (the graph's interface is a written contract).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from trainer.lamp.anomaly_map import AnomalyMapConfig, AnomalyMapGenerator


class LampOutput(NamedTuple):
    score: torch.Tensor        # (B,) image anomaly score, higher = more anomalous
    anomaly_map: torch.Tensor  # (B, 1, H, W) pixel novelty map at model resolution


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _up(c_in: int, c_out: int) -> nn.Sequential:
    # ConvTranspose2d(k=4, s=2, p=1) doubles the size exactly and exports to
    # ONNX / TensorRT as a single deconvolution layer.
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


class LampAutoencoder(nn.Module):
    """Convolutional autoencoder with a narrow spatial bottleneck.

    ``depth`` stride-2 stages halve the resolution each (so ``image_size`` must
    be divisible by 2**depth); channels double per stage from ``base_channels``
    up to 256. A 1x1 convolution squeezes the deepest features to
    ``latent_channels``: the bottleneck is what keeps the model from learning
    the identity, which would reconstruct defects too.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 256, base_channels: int = 32,
                 depth: int = 4, latent_channels: int = 32) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if depth < 1 or image_size % (2 ** depth):
            raise ValueError(
                f"image_size {image_size} must be divisible by 2**depth = {2 ** depth}; "
                f"choose a size that is a multiple of {2 ** depth}")
        widths = [min(base_channels * 2 ** i, 256) for i in range(depth)]
        encoder, c = [], in_channels
        for w in widths:
            encoder.append(_down(c, w))
            c = w
        encoder.append(nn.Conv2d(c, latent_channels, 1))
        self.encoder = nn.Sequential(*encoder)
        decoder = [nn.Conv2d(latent_channels, c, 1), nn.LeakyReLU(0.2, inplace=True)]
        # mirror of the encoder: back up through its widths, ending at base_channels
        for w in widths[-2::-1] + [base_channels]:
            decoder.append(_up(c, w))
            c = w
        decoder += [nn.Conv2d(c, in_channels, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class LampDetector(nn.Module):
    """Autoencoder + residual anomaly map + image-score pooling (the inference graph)."""

    def __init__(self, autoencoder: LampAutoencoder, map_config: AnomalyMapConfig) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.map_generator = AnomalyMapGenerator(map_config)

    def forward(self, x: torch.Tensor) -> LampOutput:
        anomaly_map = self.map_generator(x, self.autoencoder(x))
        return LampOutput(score=self.map_generator.pool(anomaly_map), anomaly_map=anomaly_map)
