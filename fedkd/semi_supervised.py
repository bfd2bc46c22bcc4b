"""The student's semi-supervised term (server): what it learns from the transfer points without a target, the
points a query budget never asked about and, under PATE, the ones the teachers' threshold refused.

Virtual adversarial training (Miyato, Maeda, Koyama & Ishii, "Virtual Adversarial Training: a regularization method
for supervised and semi-supervised learning", TPAMI 2018, Eqs. 5-6 and 12-14; ``vat_entropy`` adds the
conditional entropy of their Sec. 4.2 "VAT + EntMin"), as the authors' code computes it (takerum/vat_tf, ``vat.py``
and ``layers.py``): per point the local distributional smoothness

    LDS(x) = KL(p(·|x, θ̂) ‖ p(·|x + r_vadv, θ)),   r_vadv = ε · g / ‖g‖,
    g = ∇_r KL(p(·|x, θ̂) ‖ p(·|x + r, θ̂)) at r = ξ · d / ‖d‖, d ~ N(0, I) (K power iterations),

θ̂ the current parameters held fixed; the term is the batch mean of LDS on a minibatch of unlabeled points, added
to the student objective's loss with weight α. Normalisation as the authors': divide by the largest |d_i|, then
by sqrt(1e-6 + Σ d_i²), per example. The forwards on the unlabeled points leave batch-norm statistics alone, as
the authors' ``update_batch_stats=False`` does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedkd.config import StudentConfig


def normalized(d: torch.Tensor) -> torch.Tensor:
    """d / max|d_i|, then / sqrt(1e-6 + Σ d_i²), per example (the first dimension): unit L2 norm, stable when d
    is tiny (vat_tf's ``get_normalized_vector``)."""
    dims = tuple(range(1, d.dim()))
    d = d / (1e-12 + d.abs().amax(dim=dims, keepdim=True))
    return d / torch.sqrt(1e-6 + (d * d).sum(dim=dims, keepdim=True))


def kl_with_logits(q_logits: torch.Tensor, p_logits: torch.Tensor) -> torch.Tensor:
    """mean_x KL(softmax(q) ‖ softmax(p)) over the batch."""
    q_log = F.log_softmax(q_logits, dim=1)
    return (q_log.exp() * (q_log - F.log_softmax(p_logits, dim=1))).sum(dim=1).mean()


def entropy_with_logits(logits: torch.Tensor) -> torch.Tensor:
    """mean_x H(softmax(logits)) over the batch."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def virtual_adversarial_perturbation(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    logits: torch.Tensor,
    epsilon: float,
    xi: float,
    iterations: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """r_vadv = ε · g / ‖g‖ by ``iterations`` power iterations from a Gaussian d (drawn on the CPU from
    ``generator``): each step takes the gradient of KL(softmax(logits) ‖ softmax(forward(x + ξ d̂))) in d.
    ``logits`` are the clean forward's, treated as constants."""
    target = logits.detach()
    d = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    for _ in range(iterations):
        d = (xi * normalized(d)).requires_grad_()
        (grad,) = torch.autograd.grad(kl_with_logits(target, forward(x + d)), d)
        d = grad.detach()
    return epsilon * normalized(d)


def forward_keeping_statistics(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model``'s forward with its parameters but on copies of its buffers: batch-norm statistics stay as they
    were (the authors' ``update_batch_stats=False``)."""
    params = dict(model.named_parameters())

    def forward(x: torch.Tensor) -> torch.Tensor:
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        return functional_call(model, {**params, **buffers}, (x,))

    return forward


class VirtualAdversarial:
    """The VAT term of the student's loss, its unlabeled pool and its generator (minibatch draws and the power
    iteration's starting directions) in one object, saved with the student."""

    def __init__(self, cfg: StudentConfig, seed: int) -> None:
        self.cfg = cfg
        self.pool: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def observe_pool(self, x: np.ndarray) -> None:
        """The unlabeled points of this round: the whole transfer split, as in the authors' semi-supervised runs,
        where the unlabeled set holds every training input (those with a target too)."""
        self.pool = torch.from_numpy(x)

    def loss(self, model: nn.Module) -> torch.Tensor:
        """α · (mean LDS [+ mean entropy]) on a minibatch of ``unlabeled_batch_size`` points drawn from the pool
        with replacement."""
        cfg = self.cfg
        idx = torch.randint(len(self.pool), (cfg.unlabeled_batch_size,), generator=self.generator)
        device = next(model.parameters()).device
        x = self.pool[idx].to(device)
        forward = forward_keeping_statistics(model)
        logits = forward(x)
        r = virtual_adversarial_perturbation(forward, x, logits, cfg.vat_epsilon, cfg.vat_xi,
                                             cfg.vat_power_iterations, self.generator)
        term = kl_with_logits(logits.detach(), forward(x + r))
        if cfg.unlabeled == "vat_entropy":
            term = term + entropy_with_logits(logits)
        return cfg.unlabeled_weight * term
