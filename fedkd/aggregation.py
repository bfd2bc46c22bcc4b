"""Soft-label aggregators (server), behind a registry: M teachers' logits on the queried transfer points in,
distillation targets (and optional per-example weights) out. A new aggregator is one class registered here
plus one YAML file in conf/aggregator/."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from fedkd.config import AggregatorConfig
from fedkd.registry import Registry

AGGREGATORS = Registry("aggregator")


@dataclass(frozen=True)
class AggregationInputs:
    """What the server knows when it aggregates one round's soft labels."""

    teacher_logits: torch.Tensor  # [M, n, C], one row block per teacher
    temperature: float


@dataclass(frozen=True)
class Aggregate:
    """Targets q [n, C] (rows on the simplex), optional per-example weights [n], and statistics to log."""

    targets: torch.Tensor
    example_weights: torch.Tensor | None = None
    stats: dict[str, float] = field(default_factory=dict)


class Aggregator(ABC):
    def __init__(self, cfg: AggregatorConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def __call__(self, inputs: AggregationInputs) -> Aggregate:
        """Aggregate one round's soft labels."""


@AGGREGATORS.register("mean")
class MeanAggregator(Aggregator):
    """AVER (FedDF, Lin et al. 2020; FedMD): q(x) = (1/M) Σ_m softmax(z_m(x) / τ).  METHODS.md, "mean"."""

    def __call__(self, inputs: AggregationInputs) -> Aggregate:
        probs = torch.softmax(inputs.teacher_logits / inputs.temperature, dim=-1)
        return Aggregate(targets=probs.mean(dim=0))
