"""AVER: the plain mean of the teachers' tempered probabilities."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedkd.aggregators.base import AGGREGATORS, FixedAggregator
from fedkd.soft_labels import AggregationInputs, clip_rows, tempered_probs


@AGGREGATORS.register("mean")
class MeanAggregator(FixedAggregator):
    """AVER (FedDF, Lin et al. 2020; FedMD): q(x) = (1/M) Σ_m softmax(z_m(x) / τ).  METHODS.md "mean"."""

    @classmethod
    def sensitivity(cls, clip: float, num_clients: int) -> float:
        """The mean of M vectors clipped to c moves by at most √2·min(c, 1)/M when one client is replaced
        (non-negative vectors of norm ≤ c differ by at most √2·c; a probability vector has norm ≤ 1)."""
        return math.sqrt(2.0) * min(clip, 1.0) / num_clients

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        return tempered_probs(inputs.teacher_logits, inputs.temperature).mean(dim=0)

    def release_targets(self, inputs: AggregationInputs, clip: float, student: nn.Module,
                        x: torch.Tensor) -> torch.Tensor:
        """The mean of the clipped tempered soft labels, the quantity whose sensitivity ``sensitivity`` bounds."""
        return clip_rows(tempered_probs(inputs.teacher_logits.double(), inputs.temperature), clip).mean(0)
