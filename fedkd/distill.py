"""Student objectives (server): distillation of aggregated soft labels into the global student.

A new objective is one class registered here plus one YAML file in conf/student/.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.config import StudentConfig
from fedkd.registry import Registry
from fedkd.training import run_epochs

if TYPE_CHECKING:
    from fedkd.aggregation import Aggregator

STUDENT_OBJECTIVES = Registry("student objective")


def kd_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """ℓ_KD = τ² · KL(q ‖ softmax(z_s / τ)), averaged over the batch (weighted average if ``weights``).

    Hinton et al. (2015): the τ² factor keeps the gradient, τ · (p_s − q), on the scale of a hard-label loss.
    ``targets`` q are probabilities (already tempered by the aggregator); 0 · log 0 counts as 0.
    """
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    per_example = temperature**2 * (torch.xlogy(targets, targets) - targets * log_p).sum(dim=1)
    if weights is None:
        return per_example.mean()
    return (weights * per_example).sum() / weights.sum()


class StudentObjective(ABC):
    """The loss the server minimises on the transfer pool; may hold state across steps (robust weights)."""

    def __init__(self, cfg: StudentConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def loss(
        self, student_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Scalar loss of one minibatch of transfer points."""


@STUDENT_OBJECTIVES.register("kd")
class KD(StudentObjective):
    """Plain distillation: mean ℓ_KD over the pool (weighted when the aggregator gives per-example weights)."""

    def loss(
        self, student_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor:
        return kd_loss(student_logits, targets, self.cfg.temperature, weights)


def distill_student(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: StudentObjective,
    x: np.ndarray,
    aggregator: Aggregator,
    generator: np.random.Generator,
) -> float:
    """``cfg.epochs`` epochs of the student objective on transfer inputs ``x``; the aggregator gives the targets
    of every minibatch (it may look at the current student, as AGRE-KD does)."""
    inputs = torch.from_numpy(x)

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        xb = inputs[idx]
        logits = model(xb)
        targets, weights = aggregator.targets(idx, model, xb, logits)
        return objective.loss(logits, targets, weights)

    cfg = objective.cfg
    return run_epochs(model, optimizer, len(x), batch_loss, cfg.epochs, cfg.batch_size, generator)
