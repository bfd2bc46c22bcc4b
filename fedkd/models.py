"""Model registry. Every model exposes ``features(x)`` and a final linear ``head`` so that last-layer methods
(AGRE-KD's closed form, DFR) can address the penultimate representation uniformly."""

from __future__ import annotations

import torch
from torch import nn

from fedkd.registry import Registry

MODELS = Registry("model")


class FeatureClassifier(nn.Module):
    """A feature extractor followed by a linear head: logits = head(features(x))."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@MODELS.register("cnn")
def small_cnn(input_shape: tuple[int, int, int], num_classes: int, width: int = 16) -> FeatureClassifier:
    """Two conv blocks and a hidden layer: the teacher/student for 28x28 inputs."""
    channels, height, width_px = input_shape
    body = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (height // 4) * (width_px // 4), 64),
        nn.ReLU(),
    )
    return FeatureClassifier(body, 64, num_classes)


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: int = 128) -> FeatureClassifier:
    """One hidden layer on flattened pixels."""
    channels, height, width_px = input_shape
    body = nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width_px, hidden), nn.ReLU())
    return FeatureClassifier(body, hidden, num_classes)


def build_model(arch: str, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """A freshly initialised model; the seed fixes its initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[arch](input_shape, num_classes)
