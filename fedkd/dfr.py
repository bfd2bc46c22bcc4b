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
    device = model_device(model)
    with torch.no_grad():
        features = model.features(torch.from_numpy(held_out.x).to(device))
    y = torch.from_numpy(held_out.y).to(device)
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
