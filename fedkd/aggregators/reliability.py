"""Reliability weighting: group-robust distillation from teachers that differ in which classes they saw.

Two parts, each built on what a federated server may know (the teachers' and their ERM bases' answers on public
points, and the server's public labeled split, group-annotated as DFR needs it):

* Teacher weights, per class, from measured reliability. Teacher m's reliability on class c is its soft recall
  there, balanced over the labeled split's groups of c: r_m(c) = mean_{k ∈ groups(c)} mean_{x ∈ k} p_m(c|x).
  A point's weight is w_m(x) = Σ_c q̄(c|x) r_m(c)^β with q̄ the plain mean, and q(x) = Σ_m w_m p_m / Σ_m w_m.
  This is ``support`` (a teacher speaks for the classes it saw) with the class counts replaced by how well the
  teacher actually answers on each class, and with its worst groups counted as much as its common ones: a
  teacher whose features never separated a class, or that follows the spurious cue there, loses its say on it.
  It builds on weighting ensemble members by their per-class accuracy on held-out labeled data (Kuncheva &
  Rodríguez 2014, "A weighted voting framework for classifiers ensembles"; Dawid & Skene 1979 for the
  per-class confusion view) and on DFR's group-balanced use of the labeled split (Kirichenko et al. 2022).
  Under label skew this reads no class counts, so no client statistic leaves the clients.
* Example weights from inferred bias groups. The transfer set is as biased as the clients' data, so a student
  distilled on it uniformly learns the spurious cue from the many bias-aligned points even from debiased
  targets. A point's pseudo-group is (argmax q(x), argmax b(x)) with b the mean of the clients' ERM bases (the
  biased reference AGRE-KD uses, Kenfack et al. arXiv 2411.14984); points where the two disagree are the likely
  bias-conflicting ones. Each point is weighted by the inverse size of its pseudo-group, the group-balanced
  importance weights of Sagawa et al. 2020 / DFR with groups inferred as JTT infers them from an ERM model's
  errors (Liu et al. 2021), normalised to mean 1 and capped at ``max_example_weight`` so that a handful of points
  cannot carry a whole minibatch. With ``bias_reference=reliability`` b is the ERM bases' average under the
  teacher weights w_m(x) instead: under label skew a base that never saw a point's class cannot voice that
  class's spurious cue, and in the plain mean it blurs the reference: a per-point, per-class biased reference.
  With ``min_agreement`` a > 0, a point counts as bias-conflicting only where the teachers holding a share ≥ a
  of its teacher weight vote the target's class: where they split, a disagreement with the bases is more often
  the aggregate's own error on a bias-aligned point (there the bases, reading the cue, are right), and the
  upweighting would amplify a wrong target. Measured on fresh seeds (docs/studies.md), the gate costs: the
  upweighted wrong targets help break the shortcut, so it is off by default. The evaluation-only shares in
  ``round_stats`` show where the example weights go.

Every probability is taken at the distillation temperature, as the other aggregators take it. The works cited
above are cited for the ideas built on; their texts were not reachable from here and were not checked line by
line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedkd.aggregators.base import AGGREGATORS, Aggregator
from fedkd.config import AggregatorConfig, Components, RunConfig, fail, non_negative, one_of, positive
from fedkd.soft_labels import AggregationInputs, tempered_probs


@dataclass(frozen=True)
class ReliabilityConfig(AggregatorConfig):
    """conf/aggregator/reliability.yaml."""

    power: float = field(default=4.0, metadata=non_negative())  # β: how sharply the weights follow r_m(c); 0: mean
    example_weights: str = field(default="bias_groups", metadata=one_of("bias_groups", "none"))
    max_example_weight: float = field(default=20.0, metadata=positive())  # cap, in units of the mean weight
    bias_reference: str = field(default="mean", metadata=one_of("mean", "reliability"))  # b: how the bases combine
    min_agreement: float = field(default=0.0, metadata=non_negative())  # share of teacher weight voting argmax q

    def check(self, section: str, run: RunConfig, parts: Components) -> None:
        if self.min_agreement > 1.0:
            fail(f"{section}.min_agreement", self.min_agreement, "is a share of the teacher weight: use a value "
                 "in [0, 1] (0: every disagreeing point counts as bias-conflicting)")
        if parts.privacy.unit not in ("none", "example"):
            fail(f"{section}.name", self.name, f"weighs the teachers by their answers on the server's labeled "
                 f"split, which privacy={run.privacy.name} neither noises nor accounts for (a DP-SGD teacher's every "
                 "answer is post-processing): use privacy=dpsgd, or an aggregator that reads only transfer answers "
                 "(e.g. aggregator=mean)")


def class_reliability(labeled_probs: torch.Tensor, y: np.ndarray, g: np.ndarray) -> torch.Tensor:
    """r[m, c] = mean over the groups k of class c of mean_{x ∈ k} p_m(c|x): teacher m's group-balanced soft
    recall on class c, from its probabilities [M, n_l, C] on the labeled split with classes ``y`` and groups
    ``g``. A class absent from the split gets reliability 0 for every teacher."""
    num_teachers, _, num_classes = labeled_probs.shape
    y_t, g_t = torch.from_numpy(np.asarray(y)), torch.from_numpy(np.asarray(g))
    reliability = torch.zeros(num_teachers, num_classes, dtype=labeled_probs.dtype)
    for c in range(num_classes):
        groups = torch.unique(g_t[y_t == c])
        if len(groups):
            reliability[:, c] = torch.stack([labeled_probs[:, (y_t == c) & (g_t == k), c].mean(1)
                                             for k in groups]).mean(0)
    return reliability


def reliability_weights(probs: torch.Tensor, reliability: torch.Tensor, power: float) -> torch.Tensor:
    """w_m(x) = Σ_c q̄(c|x) r_m(c)^β for teachers' probabilities [M, n, C]; returns [M, n]."""
    return torch.einsum("nc,mc->mn", probs.mean(0), reliability.clamp_min(0.0) ** power)


def teacher_agreement(probs: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """a(x) = Σ_m w_m(x) [argmax p_m(x) = argmax q(x)]: the share of the teacher weight [M, n] (columns summing to
    1) whose teacher votes the target's class, for teachers' probabilities [M, n, C] and targets q [n, C]."""
    return (weights * (probs.argmax(2) == targets.argmax(1)[None]).to(weights.dtype)).sum(0)


def bias_group_weights(targets: torch.Tensor, biased: torch.Tensor, cap: float,
                       trusted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point weights [n], mean 1: the inverse size of the point's pseudo-group (argmax target, argmax biased
    reference), capped at ``cap`` times the mean and renormalised; also the pseudo-group of each point. A point
    whose ``trusted`` is False joins its target's aligned group (argmax target, argmax target) whatever the
    reference says."""
    num_classes = targets.shape[1]
    label = targets.argmax(1)
    reference = biased.argmax(1) if trusted is None else torch.where(trusted, biased.argmax(1), label)
    group = label * num_classes + reference
    sizes = torch.bincount(group, minlength=num_classes * num_classes).double()
    weights = 1.0 / sizes[group]
    weights = (weights / weights.mean()).clamp(max=cap)
    return weights / weights.mean(), group


def example_weight_mass(weights: torch.Tensor, targets: torch.Tensor, inputs: AggregationInputs) -> dict:
    """Evaluation-only: the share of the example weights on each true group of the transfer points, and on the
    points whose target's argmax is not their true class: does the upweighting find the bias-conflicting points,
    or the points the teachers get wrong? Empty without the evaluation-only labels and groups."""
    if inputs.groups is None or inputs.labels is None:
        return {}
    total = weights.sum()
    groups = torch.from_numpy(np.asarray(inputs.groups))
    wrong = targets.argmax(1) != torch.from_numpy(np.asarray(inputs.labels))
    return {"example_weight_share_per_group": {inputs.group_names[g]: float(weights[groups == g].sum() / total)
                                               for g in torch.unique(groups).tolist()},
            "example_weight_share_wrong_target": float(weights[wrong].sum() / total)}


@AGGREGATORS.register("reliability", params=ReliabilityConfig)
class ReliabilityWeighted(Aggregator):
    """Teachers weighted per class by their group-balanced recall on the public labeled split, transfer points
    weighted by inferred bias groups (module docstring; docs/methods.md). Targets are fixed for the
    round. The ERM bases are asked for in both settings of ``example_weights``, so that the ablation without
    example weights runs on the very same answers."""

    needs_base = True
    needs_labeled_answers = True

    def prepare(self, inputs: AggregationInputs) -> None:
        if inputs.labeled_logits is None:
            raise ValueError("reliability needs the teachers' answers on the public labeled split (labeled_logits)")
        probs = tempered_probs(inputs.teacher_logits, inputs.temperature).double()
        labeled = tempered_probs(inputs.labeled_logits, inputs.temperature).double()
        self.reliability = class_reliability(labeled, inputs.labeled_y, inputs.labeled_g)
        w = reliability_weights(probs, self.reliability, self.cfg.power)
        w = w / w.sum(0, keepdim=True).clamp_min(1e-300)
        self.teacher_weights = w
        self.q = torch.einsum("mn,mnc->nc", w, probs).float()
        self.example_weights = None
        self.upweighted = 0.0
        self.mass: dict = {}
        if self.cfg.example_weights == "bias_groups":
            if inputs.base_logits is None:
                raise ValueError("reliability with example_weights=bias_groups needs the clients' ERM base soft "
                                 "labels (base_logits)")
            bases = tempered_probs(inputs.base_logits, inputs.temperature).double()
            biased = bases.mean(0) if self.cfg.bias_reference == "mean" else torch.einsum("mn,mnc->nc", w, bases)
            trusted = teacher_agreement(probs, w, self.q) >= self.cfg.min_agreement if self.cfg.min_agreement else None
            weights, _ = bias_group_weights(self.q.double(), biased, self.cfg.max_example_weight, trusted)
            self.example_weights = weights.float()
            self.upweighted = float((weights > 1.0).double().mean())
            self.mass = example_weight_mass(weights, self.q, inputs)

    def targets(self, idx: np.ndarray, student: torch.nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = torch.from_numpy(idx)
        return self.q[rows], None if self.example_weights is None else self.example_weights[rows]

    def round_stats(self) -> dict:
        return {
            "mean_weight_per_teacher": self.teacher_weights.mean(1).tolist(),
            "class_reliability": self.reliability.tolist(),
            "upweighted_fraction": self.upweighted,
            "max_example_weight": 0.0 if self.example_weights is None else float(self.example_weights.max()),
            **self.mass,
        }
