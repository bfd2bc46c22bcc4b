"""Entropy reduction aggregation (DS-FL): the averaged soft labels, sharpened."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedkd.aggregators.base import AGGREGATORS, FixedAggregator
from fedkd.config import AggregatorConfig, positive
from fedkd.soft_labels import AggregationInputs, tempered_probs


@dataclass(frozen=True)
class EntropyReductionConfig(AggregatorConfig):
    era_temperature: float = field(default=0.1, metadata=positive())  # sharpening temperature T < 1 (DS-FL)


@AGGREGATORS.register("entropy_reduction", params=EntropyReductionConfig)
class EntropyReduction(FixedAggregator):
    """Entropy reduction aggregation (DS-FL, Itahara et al. 2020, Eq. 9): q = softmax(log(mean_m p_m) / T),
    T = ``era_temperature`` < 1 sharpens the averaged soft labels."""

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        mean = tempered_probs(inputs.teacher_logits, inputs.temperature).mean(dim=0)
        return torch.softmax(torch.log(mean.clamp_min(1e-12)) / self.cfg.era_temperature, dim=-1)
