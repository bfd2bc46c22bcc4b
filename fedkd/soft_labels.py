"""What every aggregator works from: one round's soft labels (``AggregationInputs``), and the operations on
them that aggregators and privacy mechanisms both use."""

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
    round: int = 0  # the server round these answers are aggregated in
    labels: np.ndarray | None = None  # [n], true class of each point: evaluation-only, for logging a release
    labeled_logits: torch.Tensor | None = None  # [M, n_l, C], the teachers on the server's public labeled split
    labeled_y: np.ndarray | None = None  # [n_l], that split's classes (the server's own labels)
    labeled_g: np.ndarray | None = None  # [n_l], that split's groups (annotated, as DFR needs them)


def tempered_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1)


def clip_rows(probs: torch.Tensor, clip: float) -> torch.Tensor:
    """Each vector (last axis) scaled to L2 norm ≤ ``clip`` (left alone when already inside)."""
    norms = probs.norm(dim=-1, keepdim=True)
    return probs * torch.clamp(clip / norms.clamp_min(1e-12), max=1.0)
