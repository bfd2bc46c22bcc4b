"""Benchmark builders: turn an image source into (x, y, g) splits with a known bias structure.

Every builder is seeded and deterministic, so every node of a federation builds the very same splits from
the same data definition (nothing but indices travels on the wire).

Splits: ``pool`` (partitioned across clients), ``transfer`` (public, unlabeled at the server), ``val`` (small,
labeled, with groups, at the server) and ``test``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from fedkd.config import DatasetConfig
from fedkd.data.sources import ImageSource, load_source
from fedkd.registry import Registry

SPLITS = ("pool", "transfer", "val", "test")
BENCHMARKS = Registry("dataset")

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


@dataclass(frozen=True)
class Split:
    """One split: inputs x [N, C, H, W] float32, classes y and groups g (int64), attribute a (e.g. colour),
    and the index of every example in its source."""

    x: np.ndarray
    y: np.ndarray
    g: np.ndarray
    a: np.ndarray
    source_index: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Split:
        """The examples at positions ``idx`` of this split."""
        return Split(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass(frozen=True)
class Benchmark:
    """A built benchmark: its four splits and what its classes and groups mean."""

    name: str
    num_classes: int
    group_names: tuple[str, ...]
    splits: dict[str, Split] = field(repr=False)
    description: dict[str, object] = field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.splits["test"].x.shape[1:])

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]


def _rng(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *tag.encode()]))


def split_per_class(
    labels: np.ndarray,
    cfg: DatasetConfig,
    rng: np.random.Generator,
    keep: Callable[[int, int], int] | None = None,
) -> dict[str, np.ndarray]:
    """Source indices of each split, drawn class by class.

    test and val take ``test_per_class`` / ``val_per_class`` images of every class (balanced); of the rest,
    ``keep(c, n_rest)`` images are kept (all by default; the long-tail profile otherwise) and a fraction
    ``transfer_fraction`` of them becomes the public transfer pool, the remainder the client pool.
    """
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        need = cfg.test_per_class + cfg.val_per_class
        if len(idx) <= need:
            raise ValueError(
                f"class {c} has {len(idx)} images, not enough for test_per_class + val_per_class = {need}"
            )
        out["test"].append(idx[: cfg.test_per_class])
        out["val"].append(idx[cfg.test_per_class : need])
        rest = idx[need:]
        if keep is not None:
            rest = rest[: keep(int(c), len(rest))]
        n_transfer = int(round(cfg.transfer_fraction * len(rest)))
        out["transfer"].append(rest[:n_transfer])
        out["pool"].append(rest[n_transfer:])
    return {s: np.sort(np.concatenate(parts)) for s, parts in out.items()}


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
        description={"bias_ratio": cfg.bias_ratio, "group_by": cfg.group_by, "color_std": cfg.color_std},
    )


@BENCHMARKS.register("cmnist")
def build_cmnist(cfg: DatasetConfig, seed: int) -> Benchmark:
    """Colored MNIST, 10 classes, per-digit foreground colours (Nam et al. 2020; AGRE-KD Table 1).

    Groups: ``digit_colour`` (digit x colour, 100 groups) or ``digit_alignment`` (digit x aligned/conflicting,
    20 groups); the AGRE-KD paper does not say which it uses.
    """
    source = load_source(cfg.source)
    if cfg.group_by == "digit_colour":
        names = tuple(f"digit{d}-colour{c}" for d in range(10) for c in range(10))

        def groups(y: np.ndarray, a: np.ndarray) -> np.ndarray:
            return y * 10 + a
    else:
        names = tuple(f"digit{d}-{kind}" for d in range(10) for kind in ("aligned", "conflicting"))

        def groups(y: np.ndarray, a: np.ndarray) -> np.ndarray:
            return y * 2 + (a != y)

    return _coloured_benchmark("cmnist", cfg, seed, source, lambda d: d.copy(), 10, groups, names)


@BENCHMARKS.register("cmnist2")
def build_cmnist2(cfg: DatasetConfig, seed: int) -> Benchmark:
    """Binary Colored MNIST (IRM-style label digit < 5 vs >= 5): colour agrees with the label with probability
    ``bias_ratio`` in pool/transfer and is independent of it in val/test; 4 groups = label x colour."""
    source = load_source(cfg.source)
    names = tuple(f"label{y}-colour{c}" for y in range(2) for c in range(2))
    return _coloured_benchmark(
        "cmnist2", cfg, seed, source, lambda d: (d >= 5).astype(np.int64), 2, lambda y, a: y * 2 + a, names
    )


def long_tail_counts(n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
    """Exponential profile n_c = floor(n_max * (1 / imbalance)^(c / (C - 1))), c = 0 the head class."""
    c = np.arange(num_classes)
    return np.floor(n_max * (1.0 / imbalance) ** (c / (num_classes - 1))).astype(np.int64)


@BENCHMARKS.register("mnist_lt")
def build_mnist_lt(cfg: DatasetConfig, seed: int) -> Benchmark:
    """MNIST-LT: pool and transfer follow the exponential long-tail profile (class 0 the head), val and test
    are balanced; groups are the classes."""
    source = load_source(cfg.source)
    num_classes = int(source.labels.max()) + 1
    n_rest = min(np.bincount(source.labels)) - cfg.test_per_class - cfg.val_per_class
    counts = long_tail_counts(n_rest, num_classes, cfg.imbalance)
    indices = split_per_class(source.labels, cfg, _rng(seed, "mnist_lt/split"), keep=lambda c, n: counts[c])
    splits = {}
    for split, idx in indices.items():
        y = source.labels[idx]
        splits[split] = Split(x=source.images[idx][:, None], y=y, g=y.copy(), a=np.zeros_like(y), source_index=idx)
    return Benchmark(
        name="mnist_lt",
        num_classes=num_classes,
        group_names=tuple(f"class{c}" for c in range(num_classes)),
        splits=splits,
        description={"imbalance": cfg.imbalance, "group_by": "class", "profile": counts.tolist()},
    )


