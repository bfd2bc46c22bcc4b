"""AGRE-KD's adaptive teacher weighting (Kenfack et al., arXiv 2411.14984, Eq. 5, Alg. 1), in one object
with its state, after group_DRO's LossComputer.

For a transfer point x, teacher m and the biased model b, with g_m(x) = ∇_θ ℓ_KD(x; p_m) the gradient of the
distillation loss of the student (parameters θ) towards p_m:

    W_m(x) = 1 − ⟨ĝ_m(x), ĝ_b(x)⟩,   ĝ = g / ‖g‖   (normalisation switchable: the paper's ablation)
    target q(x) = Σ_m W_m(x) p_m(x) / Σ_m W_m(x)

Distilling towards q has exactly the gradient of the paper's Σ_m W_m ℓ_KD(x; p_m) / Σ_m W_m: ℓ_KD is linear in
its target up to the target's entropy, which does not depend on θ.

Gradients, selectable:
* ``last_layer``: θ = the student's final linear layer (weight, bias). There g_m = τ (p_s − p_m) ⊗ [h, 1], so
  cos(g_m, g_b) = cos(p_s − p_m, p_s − p_b) and no backward pass is needed (exact for that θ).
* ``per_sample``: θ = ``param_set`` ("head" or "all"), per-example gradients with torch.func (vmap of grad).
Granularity: ``example`` (the paper) or ``batch`` (one weight per teacher per minibatch, from batch-summed
gradients, as a public reimplementation does). With C = 2, per-example directions are collinear, so W ∈ {0, 2}
and all weights of a point can vanish: ``degenerate=uniform`` then weighs the teachers equally, ``floor`` keeps
every weight ≥ ``floor_eps``; the number of such points is counted and logged.
Federated options (this project's, not the paper's): the biased model is a random client's ERM base, a fixed
client's, or the mean of all ERM bases; logits may be prior-corrected by log π_global − log π_client; the
weights may be multiplied by the ``support`` weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedkd.aggregators.base import AGGREGATORS, Aggregator
from fedkd.aggregators.support import support_weights
from fedkd.config import AggregatorConfig, Components, RunConfig, fail, one_of, positive
from fedkd.distill import kd_loss
from fedkd.soft_labels import AggregationInputs


@dataclass(frozen=True)
class AgreConfig(AggregatorConfig):
    """AGRE-KD's options; conf/aggregator/agre.yaml (the paper) and agre_fed.yaml (the federated options)."""

    biased: str = field(default="random_client", metadata=one_of("random_client", "fixed_client", "mean_bases"))
    biased_client: int = 0  # the client whose ERM base is biased, with biased=fixed_client
    gradient: str = field(default="last_layer", metadata=one_of("last_layer", "per_sample"))
    param_set: str = field(default="head", metadata=one_of("head", "all"))  # per_sample: which parameters
    normalize: bool = True  # cosine of gradients (the paper) or raw inner product (its ablation)
    granularity: str = field(default="example", metadata=one_of("example", "batch"))
    degenerate: str = field(default="uniform", metadata=one_of("uniform", "floor"))  # all weights of a point gone
    floor_eps: float = field(default=0.01, metadata=positive())  # degenerate=floor: the smallest weight
    prior_correction: bool = False  # shift logits by log pi_global - log pi_client before weighting
    with_support: bool = False  # multiply the weights by the support weights

    def check(self, section: str, run: RunConfig, parts: Components) -> None:
        num_clients = run.federation.num_clients
        if self.biased == "fixed_client" and not 0 <= self.biased_client < num_clients:
            fail(f"{section}.biased_client", self.biased_client, f"must name a client, 0..{num_clients - 1}")


EPS = 1e-12
VANISHED = 1e-5  # a point whose weights sum below this has none left (float32 cosines are off by ~1e-7)


def prior_corrected(logits: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    """Shift each client's logits [M, n, C] by log π_global − log π_client (Laplace-smoothed priors), so that a
    teacher's label skew is not read as disagreement with the biased model."""
    counts = class_counts.double() + 1.0
    client = counts / counts.sum(1, keepdim=True)
    overall = counts.sum(0) / counts.sum()
    return logits + (torch.log(overall)[None] - torch.log(client)).float()[:, None, :]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last dimension, 0 where either vector is 0."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(EPS)


def last_layer_similarity(student_probs: torch.Tensor, teacher_probs: torch.Tensor, biased_probs: torch.Tensor,
                          features: torch.Tensor, temperature: float, normalize: bool,
                          per_example: bool) -> torch.Tensor:
    """⟨g_m, g_b⟩ (cosine when ``normalize``) for θ = the last linear layer, in closed form. Shapes: student
    and biased [b, C], teachers [M, b, C], features h [b, d]. Returns [M, b] per example, else [M]."""
    r_m = student_probs[None] - teacher_probs  # [M, b, C]
    r_b = student_probs - biased_probs  # [b, C]
    h1 = torch.cat([features, features.new_ones(len(features), 1)], dim=1)  # [b, d + 1]
    if per_example:
        if normalize:
            return cosine(r_m, r_b[None])
        return temperature**2 * (r_m * r_b[None]).sum(-1) * (h1 * h1).sum(-1)[None]
    g_m = temperature * torch.einsum("mbc,bd->mcd", r_m, h1).flatten(1)
    g_b = temperature * torch.einsum("bc,bd->cd", r_b, h1).flatten()
    return cosine(g_m, g_b[None]) if normalize else g_m @ g_b


def per_sample_gradients(student: nn.Module, names: list[str], x: torch.Tensor, targets: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """Per-example ∇_θ ℓ_KD(x_i; q_i) for the parameters ``names``, flattened: [b, D] (torch.func vmap of grad)."""
    fixed = {k: v.detach() for k, v in student.named_parameters() if k not in names}
    fixed.update(dict(student.named_buffers()))
    chosen = {k: v.detach() for k, v in student.named_parameters() if k in names}

    def loss(params: dict, x1: torch.Tensor, q1: torch.Tensor) -> torch.Tensor:
        logits = functional_call(student, {**fixed, **params}, (x1[None],))
        return kd_loss(logits, q1[None], temperature)

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(chosen, x, targets)
    return torch.cat([grads[k].flatten(1) for k in names], dim=1)


def batch_gradient(student: nn.Module, names: list[str], x: torch.Tensor, targets: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """∇_θ of the batch-summed ℓ_KD for the parameters ``names``, flattened: [D]."""
    params = [p for k, p in student.named_parameters() if k in names]
    loss = kd_loss(student(x), targets, temperature) * len(x)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])


class AgreWeighting:
    """One round of AGRE-KD weighting: teachers' and biased soft labels in, per-minibatch targets out, and the
    weights it gave (per teacher, per group of the transfer points, degenerate points) for the log."""

    def __init__(self, cfg: AgreConfig, inputs: AggregationInputs) -> None:
        if inputs.base_logits is None:
            raise ValueError("agre needs the clients' ERM base soft labels (base_logits)")
        self.cfg = cfg
        self.tau = inputs.temperature
        teacher_logits, base_logits = inputs.teacher_logits, inputs.base_logits
        if cfg.prior_correction:
            teacher_logits = prior_corrected(teacher_logits, inputs.class_counts)
            base_logits = prior_corrected(base_logits, inputs.class_counts)
        self.probs = torch.softmax(teacher_logits / self.tau, dim=-1)  # [M, n, C]
        base_probs = torch.softmax(base_logits / self.tau, dim=-1)
        self.biased_client = self._biased_client(cfg, inputs.clients or tuple(range(len(self.probs))), inputs.seed)
        self.biased = base_probs.mean(0) if self.biased_client is None else base_probs[self.biased_client]
        self.support = None
        if cfg.with_support:
            self.support = support_weights(self.probs, inputs.class_counts.float())
        self.groups = None if inputs.groups is None else torch.from_numpy(inputs.groups)
        self.group_names = inputs.group_names
        num_teachers, num_groups = len(self.probs), len(inputs.group_names)
        self.weight_sum = torch.zeros(num_teachers, dtype=torch.float64)
        self.group_weight_sum = torch.zeros(num_groups, num_teachers, dtype=torch.float64)
        self.group_count = torch.zeros(num_groups, dtype=torch.float64)
        self.points = 0
        self.degenerate = 0

    @staticmethod
    def _biased_client(cfg: AgreConfig, clients: tuple[int, ...], seed: int) -> int | None:
        """Row of the teacher whose ERM base plays the biased model (None: the mean of all bases); ``clients``
        are the rows' partition ids (fewer than the federation's when some dropped out)."""
        if cfg.biased == "mean_bases":
            return None
        if cfg.biased == "fixed_client":
            if cfg.biased_client not in clients:
                raise ValueError(f"aggregator.biased_client={cfg.biased_client} is not among this round's clients "
                                 f"{list(clients)}")
            return clients.index(cfg.biased_client)
        return int(np.random.default_rng([seed, 2411]).integers(len(clients)))

    def raw_weights(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                    student_logits: torch.Tensor) -> torch.Tensor:
        """W_m(x) = 1 − ⟨g_m, g_b⟩ (cosine when normalised), clipped at 0; [M, b]."""
        cfg, tau = self.cfg, self.tau
        teacher_probs, biased_probs = self.probs[:, idx].to(x.device), self.biased[idx].to(x.device)
        per_example = cfg.granularity == "example"
        if cfg.gradient == "last_layer":
            with torch.no_grad():
                features = student.features(x)
            similarity = last_layer_similarity(torch.softmax(student_logits.detach() / tau, -1), teacher_probs,
                                               biased_probs, features, tau, cfg.normalize, per_example)
        else:
            names = self.parameter_names(student)
            if per_example:
                g_b = per_sample_gradients(student, names, x, biased_probs, tau)
                similarity = torch.stack([
                    self._similarity(per_sample_gradients(student, names, x, p, tau), g_b) for p in teacher_probs])
            else:
                g_b = batch_gradient(student, names, x, biased_probs, tau)
                similarity = torch.stack([self._similarity(batch_gradient(student, names, x, p, tau), g_b)
                                          for p in teacher_probs])
        weights = (1.0 - similarity).clamp_min(0.0)
        return weights if per_example else weights[:, None].expand(-1, len(idx))

    def _similarity(self, g_m: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
        return cosine(g_m, g_b) if self.cfg.normalize else (g_m * g_b).sum(-1)

    def parameter_names(self, student: nn.Module) -> list[str]:
        names = [k for k, _ in student.named_parameters()]
        return [k for k in names if k.startswith("head.")] if self.cfg.param_set == "head" else names

    def targets(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> torch.Tensor:
        weights = self.normalized_weights(idx, student, x, student_logits)
        with torch.no_grad():
            self.weight_sum += weights.sum(1).double().cpu()
            if self.groups is not None:
                g = self.groups[torch.from_numpy(idx)]
                self.group_weight_sum.index_add_(0, g, weights.T.double().cpu())
                self.group_count.index_add_(0, g, torch.ones(len(idx), dtype=torch.float64))
        return torch.einsum("mb,mbc->bc", weights, self.probs[:, idx].to(weights.device))

    def normalized_weights(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                           student_logits: torch.Tensor) -> torch.Tensor:
        """W̃_m(x) = W_m(x) / Σ_m W_m(x) with the degenerate case defined by config; [M, b], columns sum to 1."""
        weights = self.raw_weights(idx, student, x, student_logits).detach()
        if self.support is not None:
            weights = weights * self.support[:, idx].to(weights.device)
        vanished = weights.sum(0) <= VANISHED
        self.degenerate += int(vanished.sum())
        self.points += len(idx)
        if self.cfg.degenerate == "floor":
            weights = weights.clamp_min(self.cfg.floor_eps)
        else:
            weights = torch.where(vanished[None], torch.ones_like(weights), weights)
        return weights / weights.sum(0, keepdim=True)

    def stats(self) -> dict:
        """Mean normalised weight per teacher, per group of the transfer points, and degenerate points."""
        steps = max(self.points, 1)
        by_group = {self.group_names[k]: (self.group_weight_sum[k] / self.group_count[k]).tolist()
                    for k in range(len(self.group_names)) if self.group_count[k] > 0}
        return {
            "variant": f"{self.cfg.granularity}/{self.cfg.gradient}/{'cos' if self.cfg.normalize else 'dot'}",
            "biased_client": -1 if self.biased_client is None else self.biased_client,
            "mean_weight_per_teacher": (self.weight_sum / steps).tolist(),
            "mean_weight_per_group_and_teacher": by_group,
            "degenerate_points": self.degenerate,
            "degenerate_fraction": self.degenerate / steps,
        }


@AGGREGATORS.register("agre", params=AgreConfig)
class AgreAggregator(Aggregator):
    """AGRE-KD (Kenfack et al., arXiv 2411.14984, Eq. 5 and Alg. 1): per transfer point, teacher m's weight
    W_m(x) = 1 − cos(g_m(x), g_b(x)), g the gradient of ℓ_KD w.r.t. the student's parameters towards teacher m
    and towards a biased model b; the student is distilled towards Σ_m W_m p_m / Σ_m W_m, recomputed for every
    minibatch with the current student (``AgreWeighting``)."""

    needs_base = True

    @classmethod
    def needs_class_counts(cls, cfg: AgreConfig) -> bool:
        return cfg.prior_correction or cfg.with_support

    def prepare(self, inputs: AggregationInputs) -> None:
        self.weighting = AgreWeighting(self.cfg, inputs)

    def targets(self, idx: np.ndarray, student: nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.weighting.targets(idx, student, x, student_logits), None

    def round_stats(self) -> dict:
        return self.weighting.stats()
