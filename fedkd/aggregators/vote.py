"""Majority vote of the teachers' top classes."""

from __future__ import annotations

import torch

from fedkd.aggregators.base import AGGREGATORS, FixedAggregator
from fedkd.soft_labels import AggregationInputs


@AGGREGATORS.register("vote")
class MajorityVote(FixedAggregator):
    """Majority vote of the teachers' top classes (deep-ensemble vote; PATE without noise): a one-hot target;
    ties go to the lowest class index."""

    plurality_vote = True

    def aggregate(self, inputs: AggregationInputs) -> torch.Tensor:
        num_classes = inputs.teacher_logits.shape[-1]
        votes = torch.nn.functional.one_hot(inputs.teacher_logits.argmax(-1), num_classes).sum(0)
        return torch.nn.functional.one_hot(votes.argmax(-1), num_classes).float()
