"""AE-KD: teacher weights per minibatch from the min-norm point of the teachers' gradients (Du et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedkd.aggregators.base import AGGREGATORS, Aggregator
from fedkd.config import AggregatorConfig, one_of, rule
from fedkd.soft_labels import AggregationInputs, tempered_probs

LIBSVM_TOL = 1e-6  # the stopping tolerance the authors pass to scikit-learn's OneClassSVM


@dataclass(frozen=True)
class AekdConfig(AggregatorConfig):
    # the paper's tolerance C: each teacher weight is at most C (one-class SVM ν = 1 / (M C), clamped to [1/M, 1]
    # as the authors' code does, so C = 1 is the plain min-norm point and C ≤ 1/M the uniform weights); 0.6 is the
    # default of the authors' train_student.py (-C)
    tolerance: float = field(default=0.6, metadata=rule(lambda v: 0.0 < v <= 1.0, "must lie in (0, 1]"))
    normalize: bool = False  # the authors' svm_norm (off by default there): unit-norm gradients, weights ÷ ‖g_m‖ after
    # authors: the gradients their hook sees, those of the batch-mean loss (carrying 1/B), on whose small Gram
    # matrix libsvm stops early; exact: rescaled so the largest has unit norm, the min-norm point to libsvm's tolerance
    gradient_scale: str = field(default="authors", metadata=one_of("authors", "exact"))


def aekd_weights(grads: torch.Tensor, tolerance: float = 1.0, normalize: bool = False) -> torch.Tensor:
    """Teacher weights [M] from per-teacher gradients [M, d] as in the authors' code (AnTuo1998/AE-KD,
    helper/optimization.py ``find_optimal_svm``): the dual of a one-class SVM on the Gram matrix with
    ν = 1 / (M C), i.e. min_α ½ αᵀGα over the simplex with α_m ≤ C: the min-norm point of the gradients' convex
    hull, each weight capped by the paper's tolerance C. libsvm stops when its largest dual-gradient
    violation falls below ``LIBSVM_TOL`` in the units of G, so the scale of ``grads`` decides how close to that
    point the answer is (see ``AdaptiveEnsemble``)."""
    m = len(grads)
    nu = min(max(1.0 / (m * tolerance), 1.0 / m), 1.0)
    if nu == 1.0:  # every weight capped at 1/M: the uniform weights are the only feasible point
        return torch.full((m,), 1.0 / m)
    vecs = grads.float()  # float32, as the authors' G: where libsvm stops early, rounding can move the answer
    norms = vecs.norm(dim=1).clamp_min(1e-12)
    if normalize:
        vecs = vecs / norms[:, None]
    gram = (vecs @ vecs.T).double().numpy()
    from sklearn.svm import OneClassSVM  # scikit-learn costs a second to import; only AE-KD needs it

    svm = OneClassSVM(kernel="precomputed", nu=nu, tol=LIBSVM_TOL).fit(gram)
    weights = np.zeros(m)
    weights[svm.support_] = svm.dual_coef_.ravel() / (m * nu)
    if normalize:
        weights = weights / norms.double().numpy()
    return torch.from_numpy(weights / weights.sum()).float()


def teacher_gradients(teachers: torch.Tensor, student_logits: torch.Tensor, temperature: float,
                      gradient_scale: str) -> torch.Tensor:
    """Per-teacher gradients [M, C] on the student's logits, averaged over the minibatch, that AE-KD weighs.

    ``authors``: as the authors' hook on the logits collects them, the gradient of the batch-mean loss
    τ² KL(p_m ‖ p_s) / B, whose rows are τ (p_s − p_m) / B; averaged over the batch they are ḡ_m / B with
    ḡ_m = mean_x τ (p_s − p_m). ``exact``: ḡ_m / max_m' ‖ḡ_m'‖, the same directions on a unit scale, so that
    libsvm's fixed tolerance stops near the min-norm point for any B and any distance to the teachers."""
    p_s = torch.softmax(student_logits.detach() / temperature, dim=-1)
    mean_grads = (temperature * (p_s[None] - teachers)).mean(1).cpu()
    if gradient_scale == "authors":
        return mean_grads / student_logits.shape[0]
    return mean_grads / mean_grads.norm(dim=1).max().clamp_min(1e-12)


@AGGREGATORS.register("aekd", params=AekdConfig)
class AdaptiveEnsemble(Aggregator):
    """AE-KD (Du et al., NeurIPS 2020, "Agree to disagree: adaptive ensemble knowledge distillation in gradient
    space"): per minibatch, the teachers' KD gradients on the student's logits (``teacher_gradients``) give
    weights ``aekd_weights``; the student distils from Σ_m w_m ℓ_KD(p_m), whose gradient is that of
    ℓ_KD(Σ_m w_m p_m), the target returned here. AGRE-KD's Tables 1-2 list it as "AE-KD".

    The default is the authors' code as it runs (train_student.py's C = 0.6; gradients of the batch-mean loss,
    helper/loops.py): the min-norm point does not depend on the scale of the Gram matrix G, but libsvm's
    stopping tolerance is absolute, and the 1/B of the batch mean makes G B² smaller (B = 64: median 0-3 solver
    steps instead of 20-30 on random batches), so libsvm stops near its starting point (the first ⌊1/C⌋
    teachers at weight C, the next at the rest; with the student close to the teachers, exactly there). Those
    weights, not the min-norm point, are what the authors' published command distils from, and most likely
    AGRE-KD's AE-KD row, run with the authors' code; at that scale a relative change of 1e-7 in G moves them by
    up to 0.16 on about 15 % of random batches, so they are reproducible only up to float rounding.
    ``gradient_scale=exact`` gives the min-norm point itself."""

    def prepare(self, inputs: AggregationInputs) -> None:
        self.probs = tempered_probs(inputs.teacher_logits, inputs.temperature)
        self.temperature = inputs.temperature
        self.weights_seen: list[torch.Tensor] = []

    def targets(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> tuple[torch.Tensor, None]:
        teachers = self.probs[:, torch.from_numpy(idx)].to(student_logits.device)  # [M, b, C]
        grads = teacher_gradients(teachers, student_logits, self.temperature, self.cfg.gradient_scale)
        weights = aekd_weights(grads, self.cfg.tolerance, self.cfg.normalize)
        self.weights_seen.append(weights)
        return torch.einsum("m,mbc->bc", weights.to(teachers.device), teachers), None

    def round_stats(self) -> dict:
        if not self.weights_seen:
            return {}
        return {"teacher_weights_mean": [float(w) for w in torch.stack(self.weights_seen).mean(0)]}
