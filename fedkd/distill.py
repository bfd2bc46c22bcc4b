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
from fedkd.data import Split
from fedkd.registry import Registry
from fedkd.training import predict_logits, run_epochs

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
    """The loss the server minimises on the transfer pool; may hold state across steps (robust weights) and
    look at the student and the server's labeled validation split."""

    def __init__(self, cfg: StudentConfig, student: nn.Module, val: Split, num_classes: int) -> None:
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


def class_risks(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """R_y = Σ_x q_y(x) · τ² · (−log p_s(y|x)) / Σ_x q_y(x): class y's share of the distillation cross-entropy,
    weighted by the aggregated teacher's belief q_y(x) (transfer points carry no labels). Returns [C]."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    weighted = (targets * -log_p).sum(0) * temperature**2
    return weighted / targets.sum(0).clamp_min(1e-12)


@STUDENT_OBJECTIVES.register("robust_kd")
class RobustKD(StudentObjective):
    """Robust distillation for worst-class performance (Wang et al., arXiv 2206.06479; reconstructed after the
    cost-sensitive DRO of Narasimhan & Menon 2021, METHODS.md "robust_kd"):

        L = (1 − β) · mean_x ℓ_KD(x) + β · Σ_y λ_y R_y,

    λ on the simplex, updated every ``robust_period`` steps by exponentiated gradient on the student's per-class
    error on the server's labeled validation split, λ_y ← λ_y · exp(η · err_y). The weights are over classes:
    the transfer points' groups are unknown, so a per-group risk cannot be formed on them.
    """

    def __init__(self, cfg: StudentConfig, student: nn.Module, val: Split, num_classes: int) -> None:
        super().__init__(cfg, student, val, num_classes)
        self.student, self.val, self.num_classes = student, val, num_classes
        self.lam = torch.full((num_classes,), 1.0 / num_classes)
        self.steps = 0

    def loss(self, student_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        if self.steps % self.cfg.robust_period == 0:
            self.update_weights()
        self.steps += 1
        average = kd_loss(student_logits, targets, self.cfg.temperature, weights)
        worst = (self.lam * class_risks(student_logits, targets, self.cfg.temperature)).sum()
        return (1.0 - self.cfg.beta) * average + self.cfg.beta * worst

    def update_weights(self) -> None:
        """One exponentiated-gradient step on the validation error of every class."""
        was_training = self.student.training
        pred = predict_logits(self.student, self.val.x).argmax(1).numpy()
        self.student.train(was_training)
        errors = torch.tensor([1.0 - float(np.mean(pred[self.val.y == c] == c)) if np.any(self.val.y == c) else 0.0
                               for c in range(self.num_classes)])
        self.lam = self.lam * torch.exp(self.cfg.robust_eta * errors)
        self.lam = self.lam / self.lam.sum()


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
