"""Random: every minibatch distils from one teacher drawn uniformly (AGRE-KD's "Random" baseline)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedkd.aggregators.base import AGGREGATORS, Aggregator
from fedkd.soft_labels import AggregationInputs, tempered_probs


@AGGREGATORS.register("random")
class RandomTeacher(Aggregator):
    """One teacher per minibatch, drawn uniformly at random (Fukuda et al., Interspeech 2017, "Efficient
    knowledge distillation from an ensemble of teachers": the student learns from a teacher switched at random
    per minibatch; the "Random" row of AGRE-KD's Tables 1-2). The draws come from (seed, round), so a resumed
    run draws as the uninterrupted one did."""

    def prepare(self, inputs: AggregationInputs) -> None:
        self.probs = tempered_probs(inputs.teacher_logits, inputs.temperature)
        self.generator = np.random.default_rng([inputs.seed, inputs.round, 2017])
        self.draws: list[int] = []

    def targets(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> tuple[torch.Tensor, None]:
        teacher = int(self.generator.integers(len(self.probs)))
        self.draws.append(teacher)
        return self.probs[teacher][torch.from_numpy(idx)].to(student_logits.device), None

    def round_stats(self) -> dict:
        counts = np.bincount(self.draws, minlength=len(self.probs)) if self.draws else np.zeros(len(self.probs))
        return {"teacher_draws": [int(c) for c in counts]}
