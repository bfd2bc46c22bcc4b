"""Soft-label aggregators (server), behind a registry: M teachers' logits on the queried transfer points in,
distillation targets (and optional per-example weights) out. A new aggregator is one class registered here
plus one YAML file in conf/aggregator/.

``prepare`` sees one round's soft labels; ``targets`` is asked for every minibatch of distillation with the
current student, so an aggregator may adapt to the student (AGRE-KD) or stay fixed for the round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from fedkd.agre import AgreWeighting
from fedkd.config import AggregatorConfig
from fedkd.registry import Registry
from fedkd.soft_labels import AggregationInputs, support_weights, tempered_probs

AGGREGATORS = Registry("aggregator")


class Aggregator(ABC):
    needs_base: bool = False  # ask clients for their ERM base's soft labels too

    def __init__(self, cfg: AggregatorConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def prepare(self, inputs: AggregationInputs) -> None:
        """Take one round's soft labels."""

    @abstractmethod
    def targets(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Targets q [b, C] and optional per-example weights [b] for transfer points ``idx``."""

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


@AGGREGATORS.register("mean")
class MeanAggregator(FixedAggregator):
    """AVER (FedDF, Lin et al. 2020; FedMD): q(x) = (1/M) Σ_m softmax(z_m(x) / τ).  METHODS.md "mean"."""

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        return tempered_probs(inputs.teacher_logits, inputs.temperature).mean(dim=0)


@AGGREGATORS.register("entropy_reduction")
class EntropyReduction(FixedAggregator):
    """Entropy reduction aggregation (DS-FL, Itahara et al. 2020, Eq. 9): q = softmax(log(mean_m p_m) / T),
    T = ``era_temperature`` < 1 sharpens the averaged soft labels."""

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        mean = tempered_probs(inputs.teacher_logits, inputs.temperature).mean(dim=0)
        return torch.softmax(torch.log(mean.clamp_min(1e-12)) / self.cfg.era_temperature, dim=-1)


@AGGREGATORS.register("vote")
class MajorityVote(FixedAggregator):
    """Majority vote of the teachers' top classes (deep-ensemble vote; PATE without noise): a one-hot target;
    ties go to the lowest class index."""

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        num_classes = inputs.teacher_logits.shape[-1]
        votes = torch.nn.functional.one_hot(inputs.teacher_logits.argmax(-1), num_classes).sum(0)
        return torch.nn.functional.one_hot(votes.argmax(-1), num_classes).float()


@AGGREGATORS.register("support")
class SupportWeighted(FixedAggregator):
    """Label-skew aware weighting: q(x) = Σ_m w_m(x) p_m(x) / Σ_m w_m(x) with ``support_weights``."""

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        probs = tempered_probs(inputs.teacher_logits, inputs.temperature)
        w = support_weights(probs, inputs.class_counts.float())
        return torch.einsum("mn,mnc->nc", w, probs) / w.sum(0).clamp_min(1e-12)[:, None]


@AGGREGATORS.register("agre")
class AgreAggregator(Aggregator):
    """AGRE-KD (Kenfack et al., arXiv 2411.14984, Eq. 5 and Alg. 1): per transfer point, teacher m's weight
    W_m(x) = 1 − cos(g_m(x), g_b(x)), g the gradient of ℓ_KD w.r.t. the student's parameters towards teacher m
    and towards a biased model b; the student is distilled towards Σ_m W_m p_m / Σ_m W_m, recomputed for every
    minibatch with the current student. The weighting itself lives in ``fedkd.agre.AgreWeighting``."""

    needs_base = True

    def prepare(self, inputs: AggregationInputs) -> None:
        self.weighting = AgreWeighting(self.cfg, inputs)

    def targets(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.weighting.targets(idx, student, x, student_logits), None

    def round_stats(self) -> dict:
        return self.weighting.stats()
