"""What every aggregator works from: one round's soft labels (``AggregationInputs``) and the shared
weightings on them. Kept apart so that ``aggregation`` and ``agre`` both import it without a cycle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AggregationInputs:
    """What the server knows when it aggregates one round's soft labels."""

    teacher_logits: torch.Tensor  # [M, n, C], one block per teacher, ordered by partition id
    temperature: float
    class_counts: torch.Tensor  # [M, C], each client's class counts from its train reply
    base_logits: torch.Tensor | None = None  # [M, n, C], the clients' ERM bases, when the aggregator asks
    groups: np.ndarray | None = None  # [n], group of each point: evaluation-only, for logging the weighting
    group_names: tuple[str, ...] = ()
    seed: int = 0
    clients: tuple[int, ...] = ()  # partition id of each teacher row (empty: 0..M-1, every client answered)


def tempered_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def support_weights(probs: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    """w_m(x) = Σ_c q̄(c|x) · n_{m,c} / Σ_m' n_{m',c}, q̄ the plain mean: a teacher speaks for the classes it
    saw (this project's label-skew baseline, METHODS.md "support"). Returns [M, n]."""
    share = class_counts / class_counts.sum(0, keepdim=True).clamp_min(1.0)  # [M, C]
    return torch.einsum("nc,mc->mn", probs.mean(0), share)
