"""Deep Feature Reweighting (Kirichenko et al. 2022, "Last Layer Re-Training is Sufficient for Robustness to
Spurious Correlations"): group-balanced last-layer retraining, used by DFR teachers and by the student."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.data import Split
from fedkd.device import model_device
from fedkd.metrics import worst_group_accuracy

# the L2 strengths a tuned DFR head chooses between (Kirichenko et al.'s code tries seven inverse strengths C)
DFR_L2_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


def group_balanced_indices(groups: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """A subset with the same number of examples from every group present: the smallest group's size."""
    present = np.unique(groups)
    size = min(int(np.sum(groups == k)) for k in present)
    picks = [generator.choice(np.flatnonzero(groups == k), size=size, replace=False) for k in present]
    return np.sort(np.concatenate(picks))


def retrain_last_layer(model: nn.Module, held_out: Split, subsets: int, steps: int, lr: float, l2: float,
                       generator: np.random.Generator) -> None:
    """Deep Feature Reweighting (Kirichenko et al. 2022, Sec. 5): keep the features, refit the linear head on
    group-balanced subsets of held-out data with an L2 penalty, and average the heads over ``subsets``
    subsets (the paper fits an L1 logistic regression per subset and averages; L2 with full-batch gradient
    descent here, to stay in torch)."""
    features, y = _features(model, held_out)
    device = features.device
    weights, biases = [], []
    for _ in range(subsets):
        idx = torch.from_numpy(group_balanced_indices(held_out.g, generator)).to(device)
        head = copy.deepcopy(model.head)
        optimizer = torch.optim.Adam(head.parameters(), lr=lr)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(head(features[idx]), y[idx]) + l2 * head.weight.pow(2).sum()
            loss.backward()
            optimizer.step()
        weights.append(head.weight.detach())
        biases.append(head.bias.detach())
    with torch.no_grad():
        model.head.weight.copy_(torch.stack(weights).mean(0))
        model.head.bias.copy_(torch.stack(biases).mean(0))


def held_out_split(shard: Split, fraction: float) -> tuple[Split, Split]:
    """Split the shard into a training part and a held-out part, seeded by the shard's own source indices so
    that the split is the same in every round."""
    order = np.random.default_rng(shard.source_index.tolist()).permutation(len(shard))
    n_held = max(1, int(round(fraction * len(shard))))
    return shard.subset(np.sort(order[n_held:])), shard.subset(np.sort(order[:n_held]))


def _features(model: nn.Module, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen penultimate features of ``split`` (eval mode: batch-norm statistics fixed) and its labels."""
    device = model_device(model)
    model.eval()
    with torch.no_grad():
        features = model.features(torch.from_numpy(split.x).to(device))
    return features, torch.from_numpy(split.y).to(device)


def group_balanced_weights(groups: np.ndarray) -> np.ndarray:
    """Per-example weights 1 / (G · n_g) over the G groups present: every group weighs the same in the loss, the
    expectation of group-balanced batch sampling (LaBonte et al. 2024), with no example left out."""
    present, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return (1.0 / (len(present) * counts[inverse])).astype(np.float32)


def _balanced_head(head: nn.Linear, features: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, steps: int,
                   lr: float, l2: float) -> nn.Linear:
    """A copy of ``head`` refitted full-batch on the group-balanced cross-entropy plus ``l2`` · ||W||²."""
    head = copy.deepcopy(head)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        per_example = F.cross_entropy(head(features), y, reduction="none")
        loss = (weights * per_example).sum() + l2 * head.weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    return head


def split_in_halves(split: Split, generator: np.random.Generator) -> tuple[Split, Split]:
    """Two halves of ``split`` drawn with ``generator``, the first holding half (rounded down) of every group."""
    first = []
    for group in np.unique(split.g):
        members = generator.permutation(np.flatnonzero(split.g == group))
        first.append(members[: len(members) // 2])
    first_idx = np.sort(np.concatenate(first))
    return split.subset(first_idx), split.subset(np.setdiff1d(np.arange(len(split)), first_idx))


def tuned_last_layer(model: nn.Module, fit_half: Split, select_half: Split, steps: int, lr: float,
                     grid: tuple[float, ...] = DFR_L2_GRID) -> float:
    """DFR as AGRE-KD applies it to its teachers (Kenfack et al., Sec. 4: "half of the validation set ... to
    perform last-layer retraining", group-balanced, teachers frozen afterwards), with the regularisation chosen
    as Kirichenko et al.'s code does it: a head is fitted on ``fit_half`` for every L2 strength of ``grid`` and
    the one with the best worst-group accuracy on ``select_half`` is kept (ties: the weaker penalty). Returns the
    chosen strength."""
    fit_x, fit_y = _features(model, fit_half)
    select_x, _ = _features(model, select_half)
    weights = torch.from_numpy(group_balanced_weights(fit_half.g)).to(fit_x.device)
    best: tuple[float, float, nn.Linear] | None = None
    for l2 in grid:
        head = _balanced_head(model.head, fit_x, fit_y, weights, steps, lr, l2)
        with torch.no_grad():
            pred = head(select_x).argmax(1).cpu().numpy()
        score = worst_group_accuracy(pred, select_half.y, select_half.g)
        if best is None or score > best[0]:
            best = (score, l2, head)
    model.head.load_state_dict(best[2].state_dict())
    return best[1]
