"""Deep Feature Reweighting (Kirichenko et al. 2022, "Last Layer Re-Training is Sufficient for Robustness to
Spurious Correlations"): the last layer refitted on group-balanced held-out data, as the authors' code fits it
(PolinaKirichenko/deep_feature_reweighting, ``dfr_evaluate_spurious.py``, "DFR on validation"); used by DFR
teachers, the student and the references."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedkd.data import Split
from fedkd.device import model_device
from fedkd.metrics import worst_group_accuracy

if TYPE_CHECKING:
    from sklearn.preprocessing import StandardScaler

# the authors' inverse L1 strengths (C_OPTIONS), in their order: a tie keeps the first, the weakest penalty
DFR_C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
# a class absent from the refit data gets no weights and a bias this far below the lowest score any present class
# takes on that data, so the refitted head does not predict it (see ``_linear_fit``)
ABSENT_CLASS_MARGIN = 10.0


def group_balanced_indices(groups: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """A subset with the same number of examples from every group present: the smallest group's size."""
    present = np.unique(groups)
    size = min(int(np.sum(groups == k)) for k in present)
    picks = [generator.choice(np.flatnonzero(groups == k), size=size, replace=False) for k in present]
    return np.sort(np.concatenate(picks))


def group_balanced_weights(groups: np.ndarray) -> np.ndarray:
    """Per-example weights 1 / (G · n_g) over the G groups present: every group weighs the same in the loss, the
    expectation of group-balanced batch sampling (LaBonte et al. 2024), with no example left out."""
    present, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return (1.0 / (len(present) * counts[inverse])).astype(np.float32)


def held_out_split(shard: Split, fraction: float) -> tuple[Split, Split]:
    """Split the shard into a training part and a held-out part, seeded by the shard's own source indices so
    that the split is the same in every round."""
    order = np.random.default_rng(shard.source_index.tolist()).permutation(len(shard))
    n_held = max(1, int(round(fraction * len(shard))))
    return shard.subset(np.sort(order[n_held:])), shard.subset(np.sort(order[:n_held]))


def split_in_halves(split: Split, generator: np.random.Generator) -> tuple[Split, Split]:
    """Two halves of ``split`` drawn with ``generator``, the first holding half (rounded down) of every group."""
    first = []
    for group in np.unique(split.g):
        members = generator.permutation(np.flatnonzero(split.g == group))
        first.append(members[: len(members) // 2])
    first_idx = np.sort(np.concatenate(first))
    return split.subset(first_idx), split.subset(np.setdiff1d(np.arange(len(split)), first_idx))


def features(model: nn.Module, split: Split) -> np.ndarray:
    """The frozen penultimate features of ``split`` (eval mode: batch-norm statistics fixed), float64."""
    model.eval()
    with torch.no_grad():
        out = model.features(torch.from_numpy(split.x).to(model_device(model)))
    return out.cpu().double().numpy()


def _standardiser(x: np.ndarray) -> StandardScaler:
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(x)


def _binary_fit(x: np.ndarray, positive: np.ndarray, c: float,
                sample_weight: np.ndarray | None) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression  # imported where used: only DFR needs scikit-learn

    fitted = LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", random_state=0)
    fitted.fit(x, positive.astype(int), sample_weight=sample_weight)
    return fitted.coef_[0], float(fitted.intercept_[0])


def _linear_fit(x: np.ndarray, y: np.ndarray, c: float, num_classes: int,
                sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The authors' classifier on (already standardised) ``x``: L1-penalised logistic regression, liblinear,
    inverse strength ``c``, one-vs-rest over the classes present (what scikit-learn's liblinear did for several
    classes when they wrote it); liblinear's coordinate order seeded (the authors' follows numpy's global seed).
    Returned as logits' weights [num_classes, d] and biases: the binary scores of the classes present; with two
    present, the second's score against zero (softmax then equals the logistic probability); absent classes as
    ``ABSENT_CLASS_MARGIN`` says."""
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"DFR needs at least two classes in its refit data, got {present.tolist()}")
    weight = np.zeros((num_classes, x.shape[1]))
    bias = np.zeros(num_classes)
    for k in present[1:] if len(present) == 2 else present:
        weight[k], bias[k] = _binary_fit(x, y == k, c, sample_weight)
    absent = np.setdiff1d(np.arange(num_classes), present)
    if absent.size:
        scores = x @ weight[present].T + bias[present]
        bias[absent] = scores.min() - ABSENT_CLASS_MARGIN
    return weight, bias


def _worst_group_accuracy_of(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, split: Split) -> float:
    return worst_group_accuracy((x @ weight.T + bias).argmax(1), split.y, split.g)


DFR_BALANCING = ("subsample", "weights")


def _balanced(split: Split, balance: str, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of ``split`` a fit uses and their weights: a group-balanced subset (the authors'), or every row
    weighted 1 / (G n_g), scaled to mean 1 so that C means what it means unweighted."""
    if balance == "subsample":
        return group_balanced_indices(split.g, generator), None
    return np.arange(len(split)), group_balanced_weights(split.g) * len(split)


def tune_inverse_strength(fit_x: np.ndarray, fit: Split, select_x: np.ndarray, select: Split, num_classes: int,
                          generator: np.random.Generator, grid: tuple[float, ...] = DFR_C_GRID,
                          balance: str = "subsample") -> float:
    """The authors' ``dfr_on_validation_tune`` (one repetition, no class weights): on a group-balanced subset of
    ``fit`` (or all of it, group-balanced weights) standardised by its own statistics, one classifier per C,
    scored by worst-group accuracy on ``select`` (same standardisation); the first C of ``grid`` with the best
    score."""
    idx, weights = _balanced(fit, balance, generator)
    scaler = _standardiser(fit_x[idx])
    train_x, select_x = scaler.transform(fit_x[idx]), scaler.transform(select_x)
    scores = [_worst_group_accuracy_of(*_linear_fit(train_x, fit.y[idx], c, num_classes, weights), select_x, select)
              for c in grid]
    return grid[int(np.argmax(scores))]


def deep_feature_reweighting(model: nn.Module, labeled: Split, train: Split, retrains: int,
                             generator: np.random.Generator, grid: tuple[float, ...] = DFR_C_GRID,
                             balance: str = "subsample") -> float:
    """DFR on held-out data as its authors run it (``dfr_on_validation_tune`` then ``dfr_on_validation_eval``):
    C chosen on two halves of ``labeled`` (``tune_inverse_strength``; halves drawn per group, so both hold every
    group that has two examples); then ``retrains`` classifiers with that C, each on a group-balanced subset of
    the whole of ``labeled``, standardised with the statistics of the features of ``train`` (the data the model
    was trained on), their weights and biases averaged. The average is written into ``model.head`` with the
    standardisation folded in. Where the halves cannot be scored (a half without two classes) C is the grid's
    first. ``balance="weights"`` keeps every labeled example and weights the groups equally instead of
    subsampling them (the subsets' expectation; one fit, since it draws nothing): on a small labeled split with
    many groups the authors' subsets keep only the smallest group's size per group. Returns the chosen C."""
    if balance not in DFR_BALANCING:
        raise ValueError(f"balance must be one of {DFR_BALANCING}, got {balance!r}")
    num_classes = model.head.out_features
    labeled_x = features(model, labeled)
    fit, select = split_in_halves(labeled, generator)
    c = grid[0]
    if len(np.unique(fit.y)) >= 2 and len(select) > 0:
        c = tune_inverse_strength(features(model, fit), fit, features(model, select), select, num_classes,
                                  generator, grid, balance)
    scaler = _standardiser(features(model, train))
    weights, biases = [], []
    for _ in range(retrains if balance == "subsample" else 1):
        idx, sample_weight = _balanced(labeled, balance, generator)
        weight, bias = _linear_fit(scaler.transform(labeled_x[idx]), labeled.y[idx], c, num_classes, sample_weight)
        weights.append(weight)
        biases.append(bias)
    weight, bias = np.mean(weights, 0), np.mean(biases, 0)
    # w·(x - mean) / scale + b  ==  (w / scale)·x + (b - (w / scale)·mean)
    folded = weight / scaler.scale_
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(folded))
        model.head.bias.copy_(torch.from_numpy(bias - folded @ scaler.mean_))
    return c
