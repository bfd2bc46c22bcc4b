"""What a built benchmark is: its four splits of (x, y, g) examples and what its classes and groups mean, and the
class-by-class draw of the splits that the benchmark builders (``fedkd.data.benchmarks``) share.

Splits: ``pool`` (partitioned across clients), ``transfer`` (public, unlabeled at the server), ``val`` (small,
labeled, with groups, at the server) and ``test``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from fedkd.config import DatasetConfig
from fedkd.metrics import group_report

SPLITS = ("pool", "transfer", "val", "test")


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
    bias_attribute: bool = False  # the attribute a is a spurious cue for the class: a == y marks a bias-aligned image

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.splits["test"].x.shape[1:])

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]

    def report(self, pred: np.ndarray, split: str = "test") -> dict:
        """The group report of predictions ``pred`` on ``split``; on a benchmark with a bias attribute it holds
        the two-group (bias-aligned / bias-conflicting) accuracies too."""
        data = self[split]
        aligned = data.a == data.y if self.bias_attribute else None
        return group_report(pred, data.y, data.g, self.group_names, aligned)


def held_for_val(cfg: DatasetConfig) -> int:
    """Images per class kept from the pool for the server's labeled split: its reserve, or its size."""
    return cfg.val_reserve_per_class or cfg.val_per_class


def split_per_class(
    labels: np.ndarray,
    cfg: DatasetConfig,
    rng: np.random.Generator,
    keep: Callable[[int, int], int] | None = None,
    official_test: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Source indices of each split, drawn class by class.

    test and val take ``test_per_class`` / ``val_per_class`` images of every class (balanced; val the first of a
    reserve of ``val_reserve_per_class`` when one is set, so that its size moves no other split); of the rest,
    ``keep(c, n_rest)`` images are kept (all by default; the long-tail profile otherwise) and a fraction
    ``transfer_fraction`` of them becomes the public transfer pool, the remainder the client pool. With an
    ``official_test`` mask (a dataset's own train/test split), test and val come from the official test images
    and pool and transfer from the training images, so that no test image is ever trained on.
    """
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    need = cfg.test_per_class + held_for_val(cfg)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if official_test is None:
            held, rest = idx, idx[need:]
        else:
            held, rest = idx[official_test[idx]], idx[~official_test[idx]]
        if len(held) < need or len(rest) == 0:
            where = "images" if official_test is None else "official test images"
            raise ValueError(
                f"class {c} has {len(held)} {where}, not enough for test_per_class + the labeled split's "
                f"{held_for_val(cfg)} = {need}"
                + (" and a training pool" if official_test is None else "")
            )
        out["test"].append(held[: cfg.test_per_class])
        out["val"].append(held[cfg.test_per_class : cfg.test_per_class + cfg.val_per_class])
        if keep is not None:
            rest = rest[: keep(int(c), len(rest))]
        n_transfer = int(round(cfg.transfer_fraction * len(rest)))
        out["transfer"].append(rest[:n_transfer])
        out["pool"].append(rest[n_transfer:])
    return {s: np.sort(np.concatenate(parts)) for s, parts in out.items()}
