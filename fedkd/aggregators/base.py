"""What every aggregator is: ``prepare`` sees one round's soft labels; ``targets`` is asked for every minibatch
of distillation with the current student, so an aggregator may adapt to the student (AGRE-KD) or stay fixed for
the round. An aggregator declares what it needs from the federation (its clients' ERM bases, their class counts,
the teachers' answers on the server's public labeled split) and how far one client can move its output (its
sensitivity under central DP); the rest of fedkd asks these declarations and never compares aggregator names.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedkd.config import AggregatorConfig
from fedkd.registry import Registry
from fedkd.soft_labels import AggregationInputs

AGGREGATORS = Registry("aggregator", section="aggregator", params=AggregatorConfig)
PRIVATE_BATCH = 256  # transfer points per forward pass when targets are computed once for a release


class Aggregator(ABC):
    needs_base: ClassVar[bool] = False  # ask clients for their ERM base's soft labels too
    plurality_vote: ClassVar[bool] = False  # the target is the one-hot majority of the teachers' top classes
    needs_labeled_answers: ClassVar[bool] = False  # ask the teachers about the server's public labeled split

    def __init__(self, cfg: AggregatorConfig) -> None:
        self.cfg = cfg

    @classmethod
    def needs_class_counts(cls, cfg: AggregatorConfig) -> bool:
        """Whether the aggregator reads the clients' class counts (metadata a privacy setting must cover)."""
        return False

    @classmethod
    def sensitivity(cls, clip: float, num_clients: int) -> float:
        """L2 sensitivity of one point's aggregate to replacing one client (METHODS.md "central soft-label DP"):
        an aggregate in the simplex moves by at most its diameter √2, since a robust weighting can hand one
        client all the weight."""
        return math.sqrt(2.0)

    @abstractmethod
    def prepare(self, inputs: AggregationInputs) -> None:
        """Take one round's soft labels."""

    @abstractmethod
    def targets(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Targets q [b, C] and optional per-example weights [b] for transfer points ``idx``."""

    def release_targets(self, inputs: AggregationInputs, clip: float, student: nn.Module,
                        x: torch.Tensor) -> torch.Tensor:
        """The aggregate [n, C] (float64) a trusted server releases under central DP, computed once with the
        current student; ``clip`` bounds each client's vector where the sensitivity depends on it."""
        self.prepare(inputs)
        batches = []
        for start in range(0, len(x), PRIVATE_BATCH):
            idx = np.arange(start, min(len(x), start + PRIVATE_BATCH))
            xb = x[idx]
            batches.append(self.targets(idx, student, xb, student(xb))[0].detach().cpu().double())
        return torch.cat(batches)

    def round_stats(self) -> dict:
        """What to log about this round's aggregation."""
        return {}


class FixedAggregator(Aggregator):
    """Targets computed once per round from the soft labels alone."""

    def prepare(self, inputs: AggregationInputs) -> None:
        self.q = self.aggregate(inputs)

    @abstractmethod
    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        """Targets [n, C] on the simplex."""

    def targets(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.q[torch.from_numpy(idx)], None
