"""Support weighting: a teacher speaks for the classes it saw (this project's label-skew baseline)."""

from __future__ import annotations

import torch

from fedkd.aggregators.base import AGGREGATORS, FixedAggregator
from fedkd.config import AggregatorConfig
from fedkd.soft_labels import AggregationInputs, tempered_probs


def support_weights(probs: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    """w_m(x) = Σ_c q̄(c|x) · n_{m,c} / Σ_m' n_{m',c}, q̄ the plain mean of ``probs`` [M, n, C], n_{m,c} the
    clients' class counts [M, C] (METHODS.md "support"). Returns [M, n]."""
    share = class_counts / class_counts.sum(0, keepdim=True).clamp_min(1.0)  # [M, C]
    return torch.einsum("nc,mc->mn", probs.mean(0), share)


@AGGREGATORS.register("support")
class SupportWeighted(FixedAggregator):
    """Label-skew aware weighting: q(x) = Σ_m w_m(x) p_m(x) / Σ_m w_m(x) with ``support_weights``."""

    @classmethod
    def needs_class_counts(cls, cfg: AggregatorConfig) -> bool:
        return True

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        probs = tempered_probs(inputs.teacher_logits, inputs.temperature)
        w = support_weights(probs, inputs.class_counts.float())
        return torch.einsum("mn,mnc->nc", w, probs) / w.sum(0).clamp_min(1e-12)[:, None]
