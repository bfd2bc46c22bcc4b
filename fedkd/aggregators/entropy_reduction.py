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
    """Entropy reduction aggregation (DS-FL, Itahara et al., IEEE TMC 2021, arXiv 2008.06180): the mean of the
    clients' probability outputs, used as logits of a softmax at temperature T = ``era_temperature`` < 1:
    q = softmax(p̄ / T), p̄ = (1/M) Σ_m p_m. With p̄ in [0, 1] this sharpens gently (T = 0.1 turns [0.6, 0.4] into
    [0.88, 0.12]); softmax(log p̄ / T) = p̄^{1/T} renormalised would be far sharper ([0.98, 0.02]).

    The paper's text was not reachable from here; the formula is the one its public reimplementations apply
    (BlazeFL's DS-FL example: ``softmax(mean_soft_labels / era_temperature)``; AIJack's ``DSFLServer``: softmax of
    the client mean over the temperature), and matches the paper's description of "entropy reduction averaging,
    where the aggregated model outputs are intentionally sharpened" (abstract)."""

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        mean = tempered_probs(inputs.teacher_logits, inputs.temperature).mean(dim=0)
        return torch.softmax(mean / self.cfg.era_temperature, dim=-1)
