"""The MNIST network and the batch augmentation used to train it."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# Mean and standard deviation of MNIST pixels in [0, 1]; the model normalizes its own input,
# so callers (and the logged MLflow model) take plain pixel values.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    """3x3 convolution, then (when ``pool``) 2x2 max pooling, batch norm and ReLU. Pooling
    before the normalization lets batch norm and ReLU, the costliest steps of a CPU training
    step after the convolutions, work on a quarter of the pixels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        *([nn.MaxPool2d(2)] if pool else []),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DigitNet(nn.Module):
    """A small batch-normalized CNN: images ``(N, 1, 28, 28)`` in [0, 1] to logits ``(N, 10)``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_block(1, 16, pool=True),  # 14x14
            conv_block(16, 32, pool=True),  # 7x7
            conv_block(32, 64, pool=False),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.25),
            nn.Linear(256, num_classes),
        )
        # Channels-last convolutions run about a fifth faster on the CPU (oneDNN's own layout).
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = ((images - PIXEL_MEAN) / PIXEL_STD).contiguous(memory_format=torch.channels_last)
        return self.classifier(self.features(pixels))


def random_affine(
    images: torch.Tensor, max_pixels: float = 1.5, max_degrees: float = 10, max_scale: float = 0.1
) -> torch.Tensor:
    """Shift, rotate and scale each image by its own random draw (up to ``max_pixels``,
    ``max_degrees`` and ``max_scale``): the handwriting varies that much, the digit stays."""
    batch = images.shape[0]

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(batch, device=images.device) * 2 - 1) * bound

    angle = uniform(math.radians(max_degrees))
    zoom = 1 + uniform(max_scale)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(angle) / zoom
    theta[:, 0, 1] = -torch.sin(angle) / zoom
    theta[:, 1, 0] = torch.sin(angle) / zoom
    theta[:, :, 2] = (torch.rand(batch, 2, device=images.device) * 2 - 1) * (2 * max_pixels / 28)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
