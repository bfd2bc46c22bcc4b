"""Virtual adversarial training (fedkd.semi_supervised) against its definition (Miyato et al. 2018) and the
authors' code (takerum/vat_tf): the normalisation, the KL and entropy terms by hand, the power iteration against
the eigenvectors of the KL's Hessian of a linear softmax model (float64, computed by numpy), the perturbation as
adversarial as the definition says, and batch-norm statistics left alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from fedkd.conf_dir import compose
from fedkd.semi_supervised import (
    VirtualAdversarial,
    entropy_with_logits,
    kl_with_logits,
    normalized,
    virtual_adversarial_perturbation,
)
from fedkd.validation import validate


def test_normalized_is_the_authors_max_then_l2_scaling_per_example():
    d = torch.tensor([[3.0, -4.0], [0.0, 1e-9]], dtype=torch.float64)
    # vat_tf: d / (1e-12 + max|d|), then / sqrt(1e-6 + sum d^2)
    first = np.array([3.0, -4.0]) / (1e-12 + 4.0)
    first = first / np.sqrt(1e-6 + (first**2).sum())
    second = np.array([0.0, 1e-9]) / (1e-12 + 1e-9)
    second = second / np.sqrt(1e-6 + (second**2).sum())
    assert normalized(d).numpy() == pytest.approx(np.stack([first, second]), rel=1e-12)
    assert torch.linalg.norm(normalized(torch.randn(5, 3, 4, 4, dtype=torch.float64)).flatten(1), dim=1) \
        == pytest.approx(np.ones(5), abs=1e-6)


def test_kl_and_entropy_by_hand():
    q, p = torch.tensor([[0.0, np.log(3.0)]], dtype=torch.float64), torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    # softmax(q) = (1/4, 3/4), softmax(p) = (1/2, 1/2)
    kl = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
    assert kl_with_logits(q, p).item() == pytest.approx(kl, rel=1e-12)
    assert kl_with_logits(q, q).item() == pytest.approx(0.0, abs=1e-15)
    assert entropy_with_logits(q).item() == pytest.approx(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)), rel=1e-12)


def linear_softmax(num_inputs: int = 6, num_classes: int = 4, batch: int = 3, seed: int = 0):
    """A linear softmax model z = W x, its inputs, and per example the Hessian in r of KL(p(x) ‖ p(x + r)) at
    r = 0: Wᵀ (diag(p) − p pᵀ) W."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(num_classes, num_inputs))
    x = rng.normal(size=(batch, num_inputs))
    logits = x @ w.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    hessians = np.stack([w.T @ (np.diag(pi) - np.outer(pi, pi)) @ w for pi in p])
    weight = torch.from_numpy(w)
    return (lambda v: v @ weight.T), torch.from_numpy(x), hessians


def test_one_power_iteration_turns_the_random_direction_by_the_hessian():
    forward, x, hessians = linear_softmax()
    r = virtual_adversarial_perturbation(forward, x, forward(x), epsilon=2.0, xi=1e-6, iterations=1,
                                         generator=torch.Generator().manual_seed(7))
    d = normalized(torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)).numpy()
    for i, hessian in enumerate(hessians):  # g ∝ H d̂ + O(ξ): the direction of H d̂, scaled to ε
        expected = hessian @ d[i]
        assert r[i].numpy() == pytest.approx(2.0 * expected / np.linalg.norm(expected), abs=1e-5)


def test_power_iterations_find_the_hessians_top_eigenvector():
    forward, x, hessians = linear_softmax(seed=1)
    r = virtual_adversarial_perturbation(forward, x, forward(x), epsilon=1.0, xi=1e-6, iterations=60,
                                         generator=torch.Generator().manual_seed(0))
    for i, hessian in enumerate(hessians):
        values, vectors = np.linalg.eigh(hessian)
        assert values[-1] > 1.5 * values[-2]  # a gap, so that the iteration converges
        assert abs(float(r[i].numpy() @ vectors[:, -1])) == pytest.approx(1.0, abs=1e-6)


def test_the_virtual_adversarial_direction_moves_the_prediction_more_than_random_ones():
    forward, x, _ = linear_softmax(num_inputs=20, seed=2)
    logits = forward(x)
    r = virtual_adversarial_perturbation(forward, x, logits, epsilon=0.5, xi=1e-6, iterations=20,
                                         generator=torch.Generator().manual_seed(0))
    adversarial = [kl_with_logits(logits[i : i + 1], forward(x[i : i + 1] + r[i : i + 1])).item() for i in range(3)]
    rng = torch.Generator().manual_seed(1)
    for _ in range(50):
        random = 0.5 * normalized(torch.randn(x.shape, generator=rng, dtype=torch.float64))
        for i in range(3):
            assert kl_with_logits(logits[i : i + 1], forward(x[i : i + 1] + random[i : i + 1])).item() \
                < adversarial[i]


def student_config(**changes):
    return replace(validate(compose(["student.unlabeled=vat"])).student, **changes)


def test_the_term_is_vat_on_a_drawn_minibatch_and_leaves_batch_norm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    pool = np.random.default_rng(0).normal(size=(40, 3, 2, 2))
    cfg = student_config(unlabeled_batch_size=16, vat_epsilon=0.5, unlabeled_weight=2.0)
    term = VirtualAdversarial(cfg, seed=3)
    term.observe_pool(pool)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = term.loss(model)
    for key, value in model.state_dict().items():  # running mean, variance and count: untouched
        assert torch.equal(value, before[key]), key
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    # the same draws by hand: 16 indices, then the starting direction, from the one generator
    generator = torch.Generator().manual_seed(3)
    idx = torch.randint(40, (16,), generator=generator)
    x = torch.from_numpy(pool)[idx]
    model.train()
    logits = model(x)  # BatchNorm1d in training mode normalises with the batch's statistics, as the term does
    r = virtual_adversarial_perturbation(model, x, logits, 0.5, cfg.vat_xi, 1, generator)
    expected = 2.0 * kl_with_logits(logits.detach(), model(x + r))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert loss.item() > 0.0

    with_entropy = VirtualAdversarial(replace(cfg, unlabeled="vat_entropy"), seed=3)
    with_entropy.observe_pool(pool)
    assert with_entropy.loss(model).item() == pytest.approx(expected.item() + 2.0 * entropy_with_logits(logits).item(),
                                                            rel=1e-10)


def test_bad_values_are_refused_before_start():
    for override, message in (("student.unlabeled=mixmatch", "student.unlabeled"),
                              ("student.vat_epsilon=0", "student.vat_epsilon"),
                              ("student.vat_power_iterations=0", "student.vat_power_iterations"),
                              ("student.unlabeled_weight=-1", "student.unlabeled_weight")):
        with pytest.raises(ValueError, match=message):
            validate(compose([override]))
