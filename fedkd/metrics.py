"""Accuracy, per-group accuracy and worst-group accuracy (WGA): always over the groups present."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction of correct predictions."""
    if len(y) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


def per_group_accuracy(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> dict[int, float]:
    """Accuracy within each group present in ``g`` (absent groups are left out, not counted as 0)."""
    pred, y, g = map(np.asarray, (pred, y, g))
    return {int(k): accuracy(pred[g == k], y[g == k]) for k in np.unique(g)}


def group_counts(g: np.ndarray, num_groups: int) -> list[int]:
    """Number of examples of every group id 0..num_groups-1."""
    return np.bincount(np.asarray(g), minlength=num_groups).astype(int).tolist()


def worst_group_accuracy(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    """Minimum of the per-group accuracies over the groups present."""
    return min(per_group_accuracy(pred, y, g).values())


def mean_group_accuracy(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    """Unweighted mean of the per-group accuracies over the groups present."""
    return float(np.mean(list(per_group_accuracy(pred, y, g).values())))


def worst_class_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Worst-group accuracy with the classes as groups."""
    return worst_group_accuracy(pred, y, y)


def bias_group_report(pred: np.ndarray, y: np.ndarray, aligned: np.ndarray) -> dict:
    """Accuracy on the bias-aligned and on the bias-conflicting examples and the worse of the two: the two-group
    worst-group accuracy AGRE-KD's Table 1 reports for Colored MNIST (its "Average" is the plain accuracy; on a
    test set with 10 % aligned images, Average = 0.1 · aligned + 0.9 · conflicting)."""
    pred, y, aligned = np.asarray(pred), np.asarray(y), np.asarray(aligned, dtype=bool)
    parts = {name: accuracy(pred[mask], y[mask]) for name, mask in (("aligned", aligned), ("conflicting", ~aligned))
             if mask.any()}
    return {
        "bias_aligned_accuracy": parts.get("aligned"),
        "bias_conflicting_accuracy": parts.get("conflicting"),
        "two_group_worst_group_accuracy": min(parts.values()),
    }


def group_report(pred: np.ndarray, y: np.ndarray, g: np.ndarray, group_names: Sequence[str],
                 aligned: np.ndarray | None = None) -> dict:
    """Everything a round logs about one set of predictions; with ``aligned`` (which examples carry the bias
    attribute that agrees with their class) also the two-group report."""
    per_group = per_group_accuracy(pred, y, g)
    worst = min(per_group, key=per_group.get)
    counts = group_counts(g, len(group_names))
    two_groups = bias_group_report(pred, y, aligned) if aligned is not None else {}
    return {
        "accuracy": accuracy(pred, y),
        "worst_group_accuracy": per_group[worst],
        "worst_group": group_names[worst],
        "mean_group_accuracy": float(np.mean(list(per_group.values()))),
        "worst_class_accuracy": worst_class_accuracy(pred, y),
        "per_group_accuracy": {group_names[k]: v for k, v in per_group.items()},
        "group_counts": {group_names[k]: counts[k] for k in per_group},
        **two_groups,
    }
