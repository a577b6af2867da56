"""The network, a small CNN from 28x28 digit images to 10 class scores, and its accuracy."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

# Mean and standard deviation of MNIST pixels in [0, 1]. The model normalizes its own input,
# so whoever calls the logged model passes plain pixel values.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081


class SmallCNN(nn.Module):
    """Images ``(N, 1, 28, 28)`` float32 in [0, 1] -> logits ``(N, 10)``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 28x28 -> 14x14
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14 -> 7x7
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers((images - PIXEL_MEAN) / PIXEL_STD)


def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """The share of the loader's digits that ``model`` classifies right."""
    model.eval()
    correct, count = 0, 0
    with torch.no_grad():
        for images, labels in loader:
            predicted = model(images.to(device)).argmax(dim=1)
            correct += (predicted == labels.to(device)).sum().item()
            count += len(labels)
    return correct / count
