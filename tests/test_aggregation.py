"""Aggregators on hand-computed cases; AGRE-KD's weights by three independent computations."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedkd.aggregators import AGGREGATORS
from fedkd.aggregators.agre import AgreConfig, AgreWeighting, prior_corrected
from fedkd.aggregators.reliability import (
    bias_group_weights,
    class_reliability,
    example_weight_mass,
    reliability_weights,
    teacher_agreement,
)
from fedkd.aggregators.support import support_weights
from fedkd.distill import kd_loss
from fedkd.models import build_model
from fedkd.soft_labels import AggregationInputs


def _inputs(probs, counts=None, base=None, temperature=1.0, groups=None, names=()):
    logits = torch.log(torch.tensor(probs, dtype=torch.float32))
    m, _, c = logits.shape
    counts = torch.ones(m, c) if counts is None else torch.tensor(counts, dtype=torch.float32)
    base_logits = None if base is None else torch.log(torch.tensor(base, dtype=torch.float32))
    return AggregationInputs(logits * temperature, temperature, counts, base_logits, groups, names)


def _fixed_targets(name, inputs, **cfg):
    aggregator = AGGREGATORS[name](AGGREGATORS.params(name)(name=name, **cfg))
    aggregator.prepare(inputs)
    n = inputs.teacher_logits.shape[1]
    targets, weights = aggregator.targets(np.arange(n), None, None, None)
    assert weights is None
    return targets.numpy()


def test_mean_averages_tempered_probabilities():
    # logits carry temperature 2: softmax(z / 2) gives back the probabilities
    out = _fixed_targets("mean", _inputs([[[0.5, 0.5]], [[0.25, 0.75]]], temperature=2.0))
    np.testing.assert_allclose(out, [[0.375, 0.625]], rtol=1e-6)


def test_entropy_reduction_sharpens_the_mean():
    out = _fixed_targets("entropy_reduction", _inputs([[[0.8, 0.2]], [[0.4, 0.6]]]), era_temperature=0.1)
    # DS-FL: the mean [0.6, 0.4] as logits at T = 0.1: softmax([6, 4]) = [1, e^-2] / (1 + e^-2)
    np.testing.assert_allclose(out, [[1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))]], rtol=1e-5)
    assert out[0, 0] < 0.6**10 / (0.6**10 + 0.4**10)  # gentler than the power mean^(1/T) renormalised


def test_vote_is_the_majority_one_hot_with_ties_to_the_lowest_class():
    three = _inputs([[[0.9, 0.1, 0.0 + 1e-6]], [[0.2, 0.7, 0.1]], [[0.1, 0.5, 0.4]]])
    np.testing.assert_array_equal(_fixed_targets("vote", three), [[0.0, 1.0, 0.0]])
    tie = _inputs([[[0.2, 0.8]], [[0.7, 0.3]]])
    np.testing.assert_array_equal(_fixed_targets("vote", tie), [[1.0, 0.0]])


def test_support_weights_a_teacher_by_the_classes_it_saw():
    inputs = _inputs([[[0.9, 0.1]], [[0.3, 0.7]]], counts=[[10, 0], [0, 10]])
    # qbar = [0.6, 0.4]; w_1 = 0.6, w_2 = 0.4; q = 0.6 [0.9, 0.1] + 0.4 [0.3, 0.7]
    probs = torch.softmax(inputs.teacher_logits, -1)
    np.testing.assert_allclose(support_weights(probs, inputs.class_counts).numpy(), [[0.6], [0.4]], rtol=1e-6)
    np.testing.assert_allclose(_fixed_targets("support", inputs), [[0.66, 0.34]], rtol=1e-5)


def test_prior_correction_hand_computed():
    counts = torch.tensor([[3.0, 0.0], [1.0, 2.0]])  # smoothed: client 1 [4/5, 1/5], client 2 [2/5, 3/5]
    shifted = prior_corrected(torch.zeros(2, 1, 2), counts)
    overall = np.array([4 + 2, 1 + 3]) / 10.0  # the smoothed counts summed over clients, normalised
    expected = np.log(overall)[None] - np.log([[4 / 5, 1 / 5], [2 / 5, 3 / 5]])
    np.testing.assert_allclose(shifted[:, 0].numpy(), expected, rtol=1e-5)


# --- reliability ---------------------------------------------------------------------------------------------


def test_class_reliability_is_the_group_balanced_soft_recall():
    # class 0 has groups 0 (two points) and 1 (one point), class 1 groups 2 and 3 (one point each)
    y, g = np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 2, 3])
    probs = torch.tensor([[[0.9, 0.1], [0.7, 0.3], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6]],
                          [[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.9, 0.1], [0.7, 0.3]]], dtype=torch.float64)
    r = class_reliability(probs, y, g)
    # teacher 1, class 0: groups 0 and 1 weigh equally, (0.8 + 0.5) / 2, not the plain mean 0.7
    np.testing.assert_allclose(r.numpy(), [[0.65, 0.7], [0.6, 0.2]], rtol=1e-12)


def test_reliability_targets_hand_computed():
    reliability = torch.tensor([[0.65, 0.7], [0.6, 0.2]], dtype=torch.float64)
    probs = torch.tensor([[[0.8, 0.2]], [[0.4, 0.6]]], dtype=torch.float64)
    # qbar = [0.6, 0.4]; beta = 2: w_1 = 0.6 * 0.65^2 + 0.4 * 0.7^2 = 0.4495, w_2 = 0.6 * 0.36 + 0.4 * 0.04 = 0.232
    np.testing.assert_allclose(reliability_weights(probs, reliability, 2.0).numpy(), [[0.4495], [0.232]], rtol=1e-12)
    # the labeled split reproduces that reliability: one point per group, p(y|x) = r
    labeled = torch.tensor([[[0.65, 0.35], [0.3, 0.7]], [[0.6, 0.4], [0.8, 0.2]]])
    inputs = AggregationInputs(torch.log(probs.float()), 1.0, torch.ones(2, 2), torch.log(probs.float()),
                               labeled_logits=torch.log(labeled), labeled_y=np.array([0, 1]),
                               labeled_g=np.array([0, 1]))
    aggregator = AGGREGATORS["reliability"](AGGREGATORS.params("reliability")(name="reliability", power=2.0))
    aggregator.prepare(inputs)
    targets, weights = aggregator.targets(np.arange(1), None, None, None)
    expected = (0.4495 * np.array([0.8, 0.2]) + 0.232 * np.array([0.4, 0.6])) / 0.6815
    np.testing.assert_allclose(targets.numpy(), [expected], rtol=1e-5)
    np.testing.assert_allclose(weights.numpy(), [1.0], rtol=1e-6)  # one point: its own pseudo-group, weight 1
    stats = aggregator.round_stats()
    np.testing.assert_allclose(stats["mean_weight_per_teacher"], [0.4495 / 0.6815, 0.232 / 0.6815], rtol=1e-5)


def test_bias_group_weights_balance_the_inferred_groups_under_the_cap():
    targets = torch.eye(2)[[0, 0, 0, 1, 1, 0]]
    biased = torch.eye(2)[[0, 0, 0, 1, 1, 1]]  # the last point: target 0, biased reference 1 (conflicting)
    weights, groups = bias_group_weights(targets, biased, cap=10.0)
    assert groups.tolist() == [0, 0, 0, 3, 3, 1]
    # inverse sizes 1/3, 1/3, 1/3, 1/2, 1/2, 1 with mean 1/2
    np.testing.assert_allclose(weights.numpy(), [2 / 3, 2 / 3, 2 / 3, 1, 1, 2], rtol=1e-12)
    capped, _ = bias_group_weights(targets, biased, cap=1.5)
    raw = np.array([2 / 3, 2 / 3, 2 / 3, 1, 1, 1.5])
    np.testing.assert_allclose(capped.numpy(), raw / raw.mean(), rtol=1e-12)
    for w in (weights, capped):  # every group carries the same total weight until the cap binds
        assert abs(float(w.mean()) - 1.0) < 1e-12


def test_an_untrusted_disagreement_joins_its_targets_aligned_group():
    """The case above with the last point untrusted: it joins group (0, 0), now of size 4 beside (1, 1) of size 2;
    inverse sizes 1/4 ×4 and 1/2 ×2 have mean 1/3."""
    targets = torch.eye(2)[[0, 0, 0, 1, 1, 0]]
    biased = torch.eye(2)[[0, 0, 0, 1, 1, 1]]
    trusted = torch.tensor([True] * 5 + [False])
    weights, groups = bias_group_weights(targets, biased, cap=10.0, trusted=trusted)
    assert groups.tolist() == [0, 0, 0, 3, 3, 0]
    np.testing.assert_allclose(weights.numpy(), [3 / 4, 3 / 4, 3 / 4, 3 / 2, 3 / 2, 3 / 4], rtol=1e-12)


def test_teacher_agreement_is_the_teacher_weight_voting_the_targets_class():
    """Point 0: teachers 0 and 2 vote class 0, the target's: 0.5 + 0.2. Point 1: only teacher 1 votes class 1."""
    probs = torch.tensor([[[0.9, 0.1], [0.6, 0.4]], [[0.3, 0.7], [0.2, 0.8]], [[0.6, 0.4], [0.7, 0.3]]])
    weights = torch.tensor([[0.5, 0.1], [0.3, 0.3], [0.2, 0.6]])
    targets = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    np.testing.assert_allclose(teacher_agreement(probs, weights, targets).numpy(), [0.7, 0.3], rtol=1e-6)


def test_reliability_agreement_gate_upweights_only_what_the_teachers_agree_on():
    """Two teachers of equal reliability; at the last point they split (class 0 by 0.6, class 1 by 0.55), so the
    target says 0 with agreement 0.5 while the base says 1. At min_agreement 0.6 that disagreement is not trusted
    and every point sits in an aligned group: (0, 0) of 3 points, (1, 1) of 1, weights 2/3 and 2."""
    teachers = torch.tensor([[[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.6, 0.4]],
                             [[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.45, 0.55]]], dtype=torch.float64)
    bases = torch.tensor([[[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]]] * 2, dtype=torch.float64)
    labeled = torch.tensor([[[0.8, 0.2], [0.2, 0.8]]] * 2, dtype=torch.float64)
    inputs = AggregationInputs(torch.log(teachers), 1.0, torch.ones(2, 2), torch.log(bases),
                               labeled_logits=torch.log(labeled), labeled_y=np.array([0, 1]),
                               labeled_g=np.array([0, 1]))
    # up to 0.5 the last point is trusted: groups (0,0) ×2, (1,1), (0,1), inverse sizes 1/2, 1/2, 1, 1 (mean 3/4)
    expected = {0.0: [2 / 3, 2 / 3, 4 / 3, 4 / 3], 0.5: [2 / 3, 2 / 3, 4 / 3, 4 / 3], 0.6: [2 / 3, 2 / 3, 2, 2 / 3]}
    for gate, weights in expected.items():
        aggregator = AGGREGATORS["reliability"](AGGREGATORS.params("reliability")(
            name="reliability", power=1.0, min_agreement=gate))
        aggregator.prepare(inputs)
        np.testing.assert_allclose(aggregator.targets(np.arange(4), None, None, None)[1].numpy(), weights,
                                   rtol=1e-6)


def test_example_weight_mass_per_true_group_and_on_wrong_targets():
    """The weights of the case above, [2/3, 2/3, 2/3, 1, 1, 2] (sum 6), on points of true classes [0, 0, 1, 1, 1, 1]
    and true groups a, a, b, b, b, c: the targets' argmax is wrong at points 2 and 5, (2/3 + 2) / 6 = 4/9 of the
    weight; a carries (4/3) / 6, b (8/3) / 6, c 2 / 6."""
    targets = torch.eye(2, dtype=torch.float64)[[0, 0, 0, 1, 1, 0]]
    weights = torch.tensor([2 / 3, 2 / 3, 2 / 3, 1, 1, 2], dtype=torch.float64)
    inputs = AggregationInputs(torch.zeros(1, 6, 2), 1.0, torch.ones(1, 2), groups=np.array([0, 0, 1, 1, 1, 2]),
                               group_names=("a", "b", "c"), labels=np.array([0, 0, 1, 1, 1, 1]))
    mass = example_weight_mass(weights, targets, inputs)
    assert mass["example_weight_share_wrong_target"] == pytest.approx(4 / 9)
    assert mass["example_weight_share_per_group"] == pytest.approx({"a": 2 / 9, "b": 4 / 9, "c": 1 / 3})
    assert example_weight_mass(weights, targets, dataclasses.replace(inputs, labels=None)) == {}


def test_reliability_weighted_bias_reference_hand_computed():
    """Teacher 0 knows class 0 (r = 0.9, 0.1), teacher 1 class 1. At point A both teachers say class 0, so the
    weights are 0.82 / 0.18; base 0 says class 0 by 0.6 and base 1 says class 1 by 0.9. The mean reference
    (0.35, 0.65) calls A bias-conflicting; the weighted one (0.51, 0.49) calls it aligned, as B and C are."""
    teachers = torch.tensor([[[0.9, 0.1]] * 3 + [[0.1, 0.9]]] * 2, dtype=torch.float64)
    bases = torch.tensor([[[0.6, 0.4], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]],
                          [[0.1, 0.9], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]]], dtype=torch.float64)
    labeled = torch.tensor([[[0.9, 0.1], [0.9, 0.1]], [[0.1, 0.9], [0.1, 0.9]]], dtype=torch.float64)
    inputs = AggregationInputs(torch.log(teachers), 1.0, torch.ones(2, 2), torch.log(bases),
                               labeled_logits=torch.log(labeled), labeled_y=np.array([0, 1]),
                               labeled_g=np.array([0, 1]))
    expected = {"mean": [4 / 3, 2 / 3, 2 / 3, 4 / 3],  # groups (0,1), (0,0), (0,0), (1,1): sizes 1, 2, 2, 1
                "reliability": [2 / 3, 2 / 3, 2 / 3, 2]}  # groups (0,0) ×3, (1,1): sizes 3, 3, 3, 1
    for reference, weights in expected.items():
        aggregator = AGGREGATORS["reliability"](AGGREGATORS.params("reliability")(
            name="reliability", power=1.0, bias_reference=reference))
        aggregator.prepare(inputs)
        np.testing.assert_allclose(aggregator.teacher_weights[:, 0].numpy(), [0.82, 0.18], rtol=1e-12)
        np.testing.assert_allclose(aggregator.targets(np.arange(4), None, None, None)[1].numpy(), weights,
                                   rtol=1e-6)


def test_reliability_at_power_zero_is_the_mean():
    """β = 0 gives every teacher the same weight whatever its reliability: the targets are the plain mean."""
    probs = torch.tensor([[[0.8, 0.2], [0.1, 0.9]], [[0.4, 0.6], [0.3, 0.7]], [[0.5, 0.5], [0.9, 0.1]]])
    labeled = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]], [[0.6, 0.4]]])
    inputs = AggregationInputs(torch.log(probs), 1.0, torch.ones(3, 2), torch.log(probs),
                               labeled_logits=torch.log(labeled), labeled_y=np.array([0]), labeled_g=np.array([0]))
    aggregator = AGGREGATORS["reliability"](AGGREGATORS.params("reliability")(name="reliability", power=0.0,
                                                                              example_weights="none"))
    aggregator.prepare(inputs)
    targets, _ = aggregator.targets(np.arange(2), None, None, None)
    np.testing.assert_allclose(targets.numpy(), probs.mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(aggregator.round_stats()["mean_weight_per_teacher"], [1 / 3] * 3, rtol=1e-12)


def test_reliability_without_example_weights_gives_none():
    probs = [[[0.8, 0.2]], [[0.4, 0.6]]]
    plain = _inputs(probs, base=probs)
    inputs = dataclasses.replace(plain, labeled_logits=plain.teacher_logits, labeled_y=np.array([0]),
                                 labeled_g=np.array([0]))
    aggregator = AGGREGATORS["reliability"](AGGREGATORS.params("reliability")(name="reliability",
                                                                              example_weights="none"))
    aggregator.prepare(inputs)
    assert aggregator.targets(np.arange(1), None, None, None)[1] is None


# --- AGRE-KD -------------------------------------------------------------------------------------------------


def _setting(num_teachers=3, n=6, num_classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    student = build_model("mlp", (1, 6, 6), num_classes, seed=seed)
    x = torch.randn(n, 1, 6, 6, generator=gen)
    teacher = torch.randn(num_teachers, n, num_classes, generator=gen)
    base = torch.randn(num_teachers, n, num_classes, generator=gen)
    inputs = AggregationInputs(teacher, 2.0, torch.ones(num_teachers, num_classes), base, None, (), seed)
    return student, x, inputs


def _loop_weights(student, x, inputs, names, biased_client, normalize=True):
    """Plain per-example autograd: W_m(x) = 1 - cos(g_m, g_b) over the parameters ``names``."""
    tau = inputs.temperature
    probs = torch.softmax(inputs.teacher_logits / tau, -1)
    biased = torch.softmax(inputs.base_logits[biased_client] / tau, -1)
    params = [p for k, p in student.named_parameters() if k in names]

    def grad_towards(i, q):
        loss = kd_loss(student(x[i : i + 1]), q[None], tau)
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    weights = torch.zeros(len(probs), len(x))
    for i in range(len(x)):
        g_b = grad_towards(i, biased[i])
        for m in range(len(probs)):
            g_m = grad_towards(i, probs[m, i])
            sim = torch.nn.functional.cosine_similarity(g_m, g_b, dim=0) if normalize else g_m @ g_b
            weights[m, i] = (1 - sim).clamp_min(0)
    return weights


@pytest.mark.parametrize("normalize", [True, False])
def test_agre_closed_form_equals_per_sample_autograd_equals_loop_on_the_head(normalize):
    student, x, inputs = _setting()
    idx = np.arange(len(x))
    logits = student(x)
    results = {}
    for gradient in ("last_layer", "per_sample"):
        cfg = AgreConfig(name="agre", biased="fixed_client", biased_client=1, gradient=gradient,
                               param_set="head", normalize=normalize)
        results[gradient] = AgreWeighting(cfg, inputs).raw_weights(idx, student, x, logits)
    loop = _loop_weights(student, x, inputs, ["head.weight", "head.bias"], 1, normalize)
    torch.testing.assert_close(results["last_layer"], loop, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results["per_sample"], loop, rtol=1e-4, atol=1e-5)
    assert loop.max() > 0.5  # the weights are not trivially equal


def test_agre_per_sample_over_all_parameters_equals_loop():
    student, x, inputs = _setting(seed=1)
    cfg = AgreConfig(name="agre", biased="fixed_client", biased_client=0, gradient="per_sample",
                           param_set="all")
    weights = AgreWeighting(cfg, inputs).raw_weights(np.arange(len(x)), student, x, student(x))
    names = [k for k, _ in student.named_parameters()]
    torch.testing.assert_close(weights, _loop_weights(student, x, inputs, names, 0), rtol=1e-4, atol=1e-5)


def test_agre_batch_granularity_closed_form_equals_autograd():
    student, x, inputs = _setting(seed=2)
    idx = np.arange(len(x))
    out = {}
    for gradient in ("last_layer", "per_sample"):
        cfg = AgreConfig(name="agre", biased="fixed_client", gradient=gradient, granularity="batch")
        out[gradient] = AgreWeighting(cfg, inputs).raw_weights(idx, student, x, student(x))
    torch.testing.assert_close(out["last_layer"], out["per_sample"], rtol=1e-4, atol=1e-5)
    assert torch.all(out["last_layer"] == out["last_layer"][:, :1])  # one weight per teacher per batch


def test_agre_teacher_identical_to_the_biased_model_gets_weight_zero():
    student, x, inputs = _setting(num_teachers=4, seed=3)
    inputs = AggregationInputs(inputs.teacher_logits, 2.0, inputs.class_counts, inputs.teacher_logits.clone())
    cfg = AgreConfig(name="agre", biased="fixed_client", biased_client=2)
    weighting = AgreWeighting(cfg, inputs)
    weights = weighting.normalized_weights(np.arange(len(x)), student, x, student(x))
    assert torch.all(weights[2] < 1e-6) and torch.all(weights[[0, 1, 3]] > 0.01)
    torch.testing.assert_close(weights.sum(0), torch.ones(len(x)))
    targets = weighting.targets(np.arange(len(x)), student, x, student(x))
    expected = torch.einsum("mb,mbc->bc", weights, torch.softmax(inputs.teacher_logits / 2.0, -1))
    torch.testing.assert_close(targets, expected)


def test_agre_binary_weights_are_zero_or_two_and_the_degenerate_case_is_defined():
    student, x, inputs = _setting(num_teachers=5, n=40, num_classes=2, seed=4)
    idx = np.arange(len(x))
    cfg = AgreConfig(name="agre", biased="mean_bases")
    raw = AgreWeighting(cfg, inputs).raw_weights(idx, student, x, student(x))
    assert torch.all((raw - 0).abs().lt(1e-4) | (raw - 2).abs().lt(1e-4))
    # every teacher pulls like the biased model: all weights vanish on every point
    aligned = AggregationInputs(inputs.base_logits, 2.0, inputs.class_counts, inputs.base_logits)
    for degenerate in ("uniform", "floor"):
        weighting = AgreWeighting(AgreConfig(name="agre", biased="fixed_client", degenerate=degenerate),
                                  _same_direction(aligned))
        weights = weighting.normalized_weights(idx, student, x, student(x))
        torch.testing.assert_close(weights, torch.full_like(weights, 1 / 5))
        assert weighting.stats()["degenerate_points"] == len(x) and weighting.stats()["degenerate_fraction"] == 1.0


def _same_direction(inputs):
    """Teachers = the biased model (client 0's base) for every client: every W_m(x) is 0."""
    base = inputs.base_logits[0].expand_as(inputs.base_logits).clone()
    return AggregationInputs(base, inputs.temperature, inputs.class_counts, base)


def test_agre_logs_weights_per_teacher_and_group():
    student, x, inputs = _setting(n=8, seed=5)
    groups = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    inputs = AggregationInputs(inputs.teacher_logits, 2.0, inputs.class_counts, inputs.base_logits, groups,
                               ("a", "b", "c"))
    weighting = AgreWeighting(AgreConfig(name="agre"), inputs)
    weighting.targets(np.arange(8), student, x, student(x))
    stats = weighting.stats()
    assert math.isclose(sum(stats["mean_weight_per_teacher"]), 1.0, rel_tol=1e-6)
    assert set(stats["mean_weight_per_group_and_teacher"]) == {"a", "b", "c"}
    assert all(math.isclose(sum(w), 1.0, rel_tol=1e-6) for w in stats["mean_weight_per_group_and_teacher"].values())
    assert stats["variant"] == "example/last_layer/cos"


def test_random_distils_each_minibatch_from_one_teacher_drawn_by_seed_and_round():
    probs = [[[0.9, 0.1], [0.8, 0.2]], [[0.3, 0.7], [0.4, 0.6]], [[0.5, 0.5], [0.6, 0.4]]]

    def draws(seed, server_round, batches=60):
        aggregator = AGGREGATORS["random"](AGGREGATORS.params("random")(name="random"))
        inputs = _inputs(probs)
        aggregator.prepare(AggregationInputs(**{**vars(inputs), "seed": seed, "round": server_round}))
        out = []
        for _ in range(batches):
            targets, weights = aggregator.targets(np.arange(2), None, None, torch.zeros(2, 2))
            assert weights is None
            (teacher,) = [m for m in range(3) if torch.allclose(targets, torch.tensor(probs[m]))]
            out.append(teacher)
        assert aggregator.round_stats()["teacher_draws"] == np.bincount(out, minlength=3).tolist()
        return out

    first = draws(0, 1)
    assert first == draws(0, 1)  # a resumed round draws the same teachers
    assert first != draws(0, 2) and first != draws(1, 1)
    assert set(first) == {0, 1, 2} and max(np.bincount(first)) < 40  # uniform-ish over 60 minibatches
