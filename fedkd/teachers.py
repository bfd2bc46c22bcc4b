"""Local teacher objectives (clients), behind a registry: a new objective is one class here plus one YAML
file in conf/teacher/."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedkd.config import TeacherConfig
from fedkd.data import Split
from fedkd.registry import Registry
from fedkd.training import run_epochs, sgd

TEACHER_OBJECTIVES = Registry("teacher objective")


class TeacherObjective(ABC):
    """The loss a client minimises on its shard; may hold state across minibatches (e.g. group weights)."""

    def __init__(self, shard: Split, num_classes: int, num_groups: int, cfg: TeacherConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def loss(self, logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one minibatch."""


@TEACHER_OBJECTIVES.register("erm")
class ERM(TeacherObjective):
    """Empirical risk minimisation: mean cross-entropy."""

    def loss(self, logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)


def train_teacher(
    model: nn.Module,
    shard: Split,
    num_classes: int,
    num_groups: int,
    cfg: TeacherConfig,
    generator: np.random.Generator,
) -> float:
    """``cfg.epochs`` epochs of the configured objective on the shard; returns the last epoch's mean loss."""
    objective = TEACHER_OBJECTIVES[cfg.objective](shard, num_classes, num_groups, cfg)
    optimizer = sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    x, y, g = (torch.from_numpy(a) for a in (shard.x, shard.y, shard.g))

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        return objective.loss(model(x[idx]), y[idx], g[idx])

    return run_epochs(model, optimizer, len(shard), batch_loss, cfg.epochs, cfg.batch_size, generator)
