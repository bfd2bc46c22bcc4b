"""Benchmark builders: turn an image source into (x, y, g) splits with a known bias structure.

Every builder is seeded and deterministic, so every node of a federation builds the very same splits from
the same data definition (nothing but indices travels on the wire).

The splits and the ``Benchmark`` they make up are defined in ``fedkd.data.splits``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedkd.config import DatasetConfig, non_negative, one_of, open_unit, positive, registered, rule
from fedkd.data.ondisk import GroupTable, load_images, read_celeba, read_cifar, read_waterbirds
from fedkd.data.sources import ImageSource, load_source
from fedkd.data.splits import SPLITS, Benchmark, Split, held_for_val, split_per_class
from fedkd.registry import Registry

BENCHMARKS = Registry("dataset", section="dataset", params=DatasetConfig)


@dataclass(frozen=True)
class MnistSourcedConfig(DatasetConfig):
    """A benchmark built from MNIST images: which copy of MNIST (the embedded 5000, full MNIST, torchvision's)."""

    source: str = field(default="mnist5k", metadata=registered("source"))


@dataclass(frozen=True)
class ColouredConfig(MnistSourcedConfig):
    bias_ratio: float = field(default=0.99, metadata=open_unit(" (e.g. 0.99)"))  # share of bias-aligned images
    color_std: float = field(default=0.05, metadata=non_negative())  # std of an image's colour around its mean


@dataclass(frozen=True)
class ColouredTenConfig(ColouredConfig):
    group_by: str = field(default="digit_alignment", metadata=one_of("digit_colour", "digit_alignment"))


@dataclass(frozen=True)
class LongTailConfig(DatasetConfig):
    imbalance: float = field(default=10.0, metadata=rule(
        lambda v: v >= 1.0, "must be >= 1 (1 = balanced, 10 or 100 = long-tailed)"))  # n_max / n_min


@dataclass(frozen=True)
class MnistLongTailConfig(LongTailConfig, MnistSourcedConfig):
    """MNIST-LT: the long-tail profile over a chosen copy of MNIST."""


@dataclass(frozen=True)
class ImageFolderConfig(DatasetConfig):
    image_size: int = field(default=64, metadata=positive())  # side of the square RGB inputs
    max_examples: int = field(default=0, metadata=non_negative(
        " (0 = every official training image)"))  # at most this many official training images (seeded draw)

# Ten RGB foreground means, one per digit, for the Nam et al. (2020, "Learning from Failure") construction.
# LfF ships its means as a binary tensor; these are ten well separated colours in the same spirit.
PALETTE = np.array(
    [
        [0.90, 0.10, 0.10],  # red
        [0.10, 0.80, 0.10],  # green
        [0.15, 0.30, 0.95],  # blue
        [0.95, 0.85, 0.10],  # yellow
        [0.85, 0.15, 0.85],  # magenta
        [0.10, 0.85, 0.85],  # cyan
        [0.95, 0.55, 0.10],  # orange
        [0.50, 0.20, 0.60],  # purple
        [0.55, 0.55, 0.55],  # grey
        [0.60, 0.95, 0.60],  # mint
    ],
    dtype=np.float32,
)


def _rng(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *tag.encode()]))


def colourize(gray: np.ndarray, colour_ids: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Foreground colouring as in LfF: clip(mean[colour] + N(0, std^2 I), 0, 1) times the grayscale stroke."""
    colours = np.clip(PALETTE[colour_ids] + rng.normal(0.0, std, size=(len(colour_ids), 3)), 0.0, 1.0)
    return (colours[:, :, None, None] * gray[:, None, :, :]).astype(np.float32)


def biased_colours(
    y: np.ndarray, bias_ratio: float, num_colours: int, rng: np.random.Generator
) -> np.ndarray:
    """Colour ids for a biased split: per class exactly round((1 - bias_ratio) * n) images get a conflicting
    colour (uniform over the other colours), every other image its class's own colour (colour id = class)."""
    colours = y.copy()
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_conflicting = int(round((1.0 - bias_ratio) * len(idx)))
        conflicting = idx[:n_conflicting]
        colours[conflicting] = (c + rng.integers(1, num_colours, size=n_conflicting)) % num_colours
    return colours


def unbiased_colours(y: np.ndarray, num_colours: int, rng: np.random.Generator) -> np.ndarray:
    """Colour ids independent of the class: every class gets each colour equally often (up to one image)."""
    colours = np.empty_like(y)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        colours[idx] = rng.permutation(np.arange(len(idx)) % num_colours)
    return colours


def _coloured_benchmark(
    name: str,
    cfg: DatasetConfig,
    seed: int,
    source: ImageSource,
    to_label: Callable[[np.ndarray], np.ndarray],
    num_classes: int,
    groups: Callable[[np.ndarray, np.ndarray], np.ndarray],
    group_names: tuple[str, ...],
    group_by: str,
) -> Benchmark:
    indices = split_per_class(source.labels, cfg, _rng(seed, f"{name}/split"))
    splits = {}
    for split, idx in indices.items():
        rng = _rng(seed, f"{name}/{split}")
        y = to_label(source.labels[idx])
        if split in ("pool", "transfer"):
            a = biased_colours(y, cfg.bias_ratio, num_classes, rng)
        else:
            a = unbiased_colours(y, num_classes, rng)
        x = colourize(source.images[idx], a, cfg.color_std, rng)
        splits[split] = Split(x=x, y=y, g=groups(y, a), a=a, source_index=idx)
    return Benchmark(
        name=name,
        num_classes=num_classes,
        group_names=group_names,
        splits=splits,
        description={"bias_ratio": cfg.bias_ratio, "group_by": group_by, "color_std": cfg.color_std},
        bias_attribute=True,
    )


@BENCHMARKS.register("cmnist", params=ColouredTenConfig)
def build_cmnist(cfg: DatasetConfig, seed: int) -> Benchmark:
    """Colored MNIST, 10 classes, per-digit foreground colours (Nam et al. 2020; AGRE-KD Table 1).

    Groups: ``digit_colour`` (digit x colour, 100 groups) or ``digit_alignment`` (digit x aligned/conflicting,
    20 groups); the AGRE-KD paper does not say which it uses.
    """
    source = load_source(cfg.source, cfg.data_root)
    if cfg.group_by == "digit_colour":
        names = tuple(f"digit{d}-colour{c}" for d in range(10) for c in range(10))

        def groups(y: np.ndarray, a: np.ndarray) -> np.ndarray:
            return y * 10 + a
    else:
        names = tuple(f"digit{d}-{kind}" for d in range(10) for kind in ("aligned", "conflicting"))

        def groups(y: np.ndarray, a: np.ndarray) -> np.ndarray:
            return y * 2 + (a != y)

    return _coloured_benchmark("cmnist", cfg, seed, source, lambda d: d.copy(), 10, groups, names, cfg.group_by)


@BENCHMARKS.register("cmnist2", params=ColouredConfig)
def build_cmnist2(cfg: DatasetConfig, seed: int) -> Benchmark:
    """Binary Colored MNIST (IRM-style label digit < 5 vs >= 5): colour agrees with the label with probability
    ``bias_ratio`` in pool/transfer and is independent of it in val/test; 4 groups = label x colour."""
    source = load_source(cfg.source, cfg.data_root)
    names = tuple(f"label{y}-colour{c}" for y in range(2) for c in range(2))
    return _coloured_benchmark(
        "cmnist2", cfg, seed, source, lambda d: (d >= 5).astype(np.int64), 2, lambda y, a: y * 2 + a, names,
        "label_colour")


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
    """Exponential profile n_c = floor(n_max * (1 / imbalance)^(c / (C - 1))), c = 0 the head class."""
    c = np.arange(num_classes)
    return np.floor(n_max * (1.0 / imbalance) ** (c / (num_classes - 1))).astype(np.int64)


def _long_tail_benchmark(
    name: str,
    cfg: DatasetConfig,
    seed: int,
    labels: np.ndarray,
    images_at: Callable[[np.ndarray], np.ndarray],
    group_names: tuple[str, ...],
    imbalance: float,
    official_test: np.ndarray | None = None,
) -> Benchmark:
    """Pool and transfer follow the exponential long-tail profile (class 0 the head, n_max the smallest class's
    training images), val and test are balanced; groups are the classes. ``images_at(idx)`` gives float32
    [n, C, H, W] inputs, so that only the images a split keeps are converted."""
    train = labels if official_test is None else labels[~official_test]
    n_max = min(np.bincount(train)) - (cfg.test_per_class + held_for_val(cfg) if official_test is None else 0)
    counts = long_tail_counts(n_max, len(group_names), imbalance)
    indices = split_per_class(labels, cfg, _rng(seed, f"{name}/split"), lambda c, n: counts[c], official_test)
    splits = {}
    for split, idx in indices.items():
        y = labels[idx]
        splits[split] = Split(x=images_at(idx), y=y, g=y.copy(), a=np.zeros_like(y), source_index=idx)
    return Benchmark(
        name=name,
        num_classes=len(group_names),
        group_names=group_names,
        splits=splits,
        description={"imbalance": imbalance, "group_by": "class", "profile": counts.tolist()},
    )


@BENCHMARKS.register("mnist_lt", params=MnistLongTailConfig)
def build_mnist_lt(cfg: DatasetConfig, seed: int) -> Benchmark:
    """MNIST-LT: pool and transfer follow the exponential long-tail profile (class 0 the head), val and test
    are balanced; groups are the classes."""
    source = load_source(cfg.source, cfg.data_root)
    num_classes = int(source.labels.max()) + 1
    return _long_tail_benchmark("mnist_lt", cfg, seed, source.labels, lambda idx: source.images[idx][:, None],
                                tuple(f"class{c}" for c in range(num_classes)), cfg.imbalance)


def _cifar(name: str, cfg: DatasetConfig, seed: int, num_classes: int, imbalance: float) -> Benchmark:
    """CIFAR from torchvision's files in ``data_root``. Splits: pool and transfer from the official training set
    (50000 images; 5000 / 500 per class for CIFAR-10 / CIFAR-100) with the long-tail profile, test and val
    balanced from the official test set (1000 / 100 per class), so test_per_class + val_per_class must fit in it.
    ``source_index`` counts training images first, then test images. Groups are the classes, named from the
    meta file."""
    data = read_cifar(Path(cfg.data_root), num_classes)
    images = np.concatenate([data.train_x, data.test_x])
    labels = np.concatenate([data.train_y, data.test_y])
    official_test = np.arange(len(labels)) >= len(data.train_y)
    return _long_tail_benchmark(name, cfg, seed, labels, lambda idx: (images[idx] / 255.0).astype(np.float32),
                                data.class_names, imbalance, official_test)


@BENCHMARKS.register("cifar10_lt", params=LongTailConfig)
def build_cifar10_lt(cfg: DatasetConfig, seed: int) -> Benchmark:
    """CIFAR-10-LT (Cao et al. 2019 profile) with imbalance ``dataset.imbalance``; see ``_cifar`` for the splits."""
    return _cifar("cifar10_lt", cfg, seed, 10, cfg.imbalance)


@BENCHMARKS.register("cifar100_lt", params=LongTailConfig)
def build_cifar100_lt(cfg: DatasetConfig, seed: int) -> Benchmark:
    """CIFAR-100-LT (fine labels) with imbalance ``dataset.imbalance``; see ``_cifar`` for the splits."""
    return _cifar("cifar100_lt", cfg, seed, 100, cfg.imbalance)


@BENCHMARKS.register("cifar10")
def build_cifar10(cfg: DatasetConfig, seed: int) -> Benchmark:
    """Balanced CIFAR-10 (the long-tail construction at imbalance 1)."""
    return _cifar("cifar10", cfg, seed, 10, 1.0)


@BENCHMARKS.register("cifar100")
def build_cifar100(cfg: DatasetConfig, seed: int) -> Benchmark:
    """Balanced CIFAR-100 (the long-tail construction at imbalance 1)."""
    return _cifar("cifar100", cfg, seed, 100, 1.0)


def _spurious_benchmark(name: str, cfg: DatasetConfig, seed: int, table: GroupTable,
                        class_names: tuple[str, str], attribute_names: tuple[str, str]) -> Benchmark:
    """A binary task with a binary spurious attribute and official train/val/test splits (Waterbirds, CelebA);
    groups g = 2 y + a, named ``<class>-<attribute>``.

    Split mapping: pool and transfer come from the official train split (at most ``max_examples`` of it, a seeded
    uniform draw that keeps the spurious correlation; 0 = all), divided group by group with ``transfer_fraction``;
    val takes up to ``val_per_class`` images of every group from the official val split and test up to
    ``test_per_class`` of every group from the official test split (so both are group-balanced as far as the
    smallest groups allow; a large value keeps the whole official split). Images are decoded, center-cropped and
    resized to ``image_size`` only for the examples kept.
    """
    rng = _rng(seed, f"{name}/split")
    g = 2 * table.y + table.a
    train = np.flatnonzero(table.official_split == 0)
    if 0 < cfg.max_examples < len(train):
        train = np.sort(rng.choice(train, cfg.max_examples, replace=False))
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for group in range(4):
        members = rng.permutation(train[g[train] == group])
        n_transfer = int(round(cfg.transfer_fraction * len(members)))
        parts["transfer"].append(members[:n_transfer])
        parts["pool"].append(members[n_transfer:])
        for split, official, per_group in (("val", 1, cfg.val_per_class), ("test", 2, cfg.test_per_class)):
            held = rng.permutation(np.flatnonzero((table.official_split == official) & (g == group)))
            if len(held) == 0:
                raise ValueError(f"{name}: the official {split} split has no image of group {group}; every "
                                 "group must be present in val and test")
            parts[split].append(held[:per_group])
    splits = {}
    for split, chosen in parts.items():
        idx = np.sort(np.concatenate(chosen))
        x = load_images([table.paths[i] for i in idx], cfg.image_size)
        splits[split] = Split(x=x, y=table.y[idx], g=g[idx], a=table.a[idx], source_index=idx)
    return Benchmark(
        name=name,
        num_classes=2,
        group_names=tuple(f"{c}-{a}" for c in class_names for a in attribute_names),
        splits=splits,
        description={"group_by": "class_attribute", "image_size": cfg.image_size, "max_examples": cfg.max_examples},
    )


@BENCHMARKS.register("waterbirds", params=ImageFolderConfig)
def build_waterbirds(cfg: DatasetConfig, seed: int) -> Benchmark:
    """Waterbirds (Sagawa et al. 2020): landbird / waterbird against a land / water background, 4 groups; the
    folder ``waterbird_complete95_forest2water2`` in ``data_root``. See ``_spurious_benchmark`` for the splits."""
    table = read_waterbirds(Path(cfg.data_root))
    return _spurious_benchmark("waterbirds", cfg, seed, table, ("landbird", "waterbird"), ("land", "water"))


@BENCHMARKS.register("celeba", params=ImageFolderConfig)
def build_celeba(cfg: DatasetConfig, seed: int) -> Benchmark:
    """CelebA blond-hair classification (target Blond_Hair, spurious attribute Male; Sagawa et al. 2020), 4 groups,
    from torchvision's ``celeba`` folder in ``data_root``. The full set (202599 images) does not fit in memory
    as float arrays: cap the training images with ``max_examples``. See ``_spurious_benchmark`` for the splits."""
    table = read_celeba(Path(cfg.data_root), "Blond_Hair", "Male")
    return _spurious_benchmark("celeba", cfg, seed, table, ("not_blond", "blond"), ("female", "male"))
