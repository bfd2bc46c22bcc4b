"""Hand-computed metrics, KD loss and aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedkd.distill import kd_loss
from fedkd.metrics import (
    accuracy,
    group_report,
    mean_group_accuracy,
    per_group_accuracy,
    worst_class_accuracy,
    worst_group_accuracy,
)


def test_worst_group_accuracy_hand_made():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 1])
    g = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])  # group 3 absent: it must not count as 0
    assert per_group_accuracy(pred, y, g) == {0: 0.75, 1: 1.0, 2: 0.5}
    assert worst_group_accuracy(pred, y, g) == 0.5
    assert mean_group_accuracy(pred, y, g) == pytest.approx(0.75)
    assert accuracy(pred, y) == pytest.approx(0.7)
    assert worst_class_accuracy(pred, y) == pytest.approx(4 / 6)  # class 0: 3/4, class 1: 4/6
    report = group_report(pred, y, g, ["a", "b", "c", "d"])
    assert report["worst_group"] == "c" and report["group_counts"] == {"a": 4, "b": 2, "c": 4}


def test_kd_loss_hand_computed():
    # tau = 1, student uniform over 2 classes, target one-hot: KL = log 2
    loss = kd_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(2))
    # tau = 2, z_s = [0, 2 ln 3] -> p_s = [1/4, 3/4]; q = [1/2, 1/2]:
    # KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3); times tau^2 = 2 ln(4/3)
    z = torch.tensor([[0.0, 2 * math.log(3)]], requires_grad=True)
    q = torch.tensor([[0.5, 0.5]])
    loss = kd_loss(z, q, temperature=2.0)
    assert loss.item() == pytest.approx(2 * math.log(4 / 3), rel=1e-6)
    loss.backward()
    # gradient tau * (p_s - q)
    np.testing.assert_allclose(z.grad.numpy(), [[2 * (0.25 - 0.5), 2 * (0.75 - 0.5)]], rtol=1e-5)


def test_kd_loss_weighted_mean_and_zero_at_target():
    q = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    z = torch.log(q) * 3.0  # softmax(z / 3) == q
    assert kd_loss(z, q, temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)
    z2 = torch.zeros(2, 2)
    per = [kd_loss(z2[i : i + 1], q[i : i + 1], 1.0).item() for i in range(2)]
    weighted = kd_loss(z2, q, 1.0, weights=torch.tensor([3.0, 1.0])).item()
    assert weighted == pytest.approx((3 * per[0] + per[1]) / 4)


def test_class_risks_hand_computed():
    from fedkd.distill import class_risks

    # tau = 1; student uniform over 2 classes: -log p = log 2 everywhere
    targets = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    risks = class_risks(torch.zeros(2, 2), targets, temperature=1.0)
    np.testing.assert_allclose(risks.numpy(), [math.log(2), math.log(2)], rtol=1e-6)
    # student p = [1/4, 3/4] on point 1 only: R_0 = (1 log 4 + 0.5 log 2) / 1.5; R_1 = (0 + 0.5 log 2) / 0.5
    logits = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]])
    risks = class_risks(logits, targets, temperature=1.0)
    np.testing.assert_allclose(risks.numpy(), [(math.log(4) + 0.5 * math.log(2)) / 1.5, math.log(2)], rtol=1e-6)


def test_robust_kd_weight_update_and_trade_off():
    from fedkd.data import Split
    from fedkd.distill import RobustKD, class_risks
    from fedkd.validation import load_run_config

    class Constant(torch.nn.Module):
        """Predicts class 0 for everything."""

        def forward(self, x):
            return torch.tensor([[5.0, 0.0, 0.0]]).expand(len(x), 3)

    y = np.array([0, 0, 1, 1, 2, 2])
    val = Split(x=np.zeros((6, 1, 1, 1), np.float32), y=y, g=y, a=y, source_index=np.arange(6))
    cfg = load_run_config(["student=robust_kd", "student.robust_eta=1.0", "student.robust_period=2",
                           "student.beta=0.25"]).student
    objective = RobustKD(cfg, Constant(), val, 3)
    logits, targets = torch.randn(4, 3), torch.softmax(torch.randn(4, 3), 1)
    loss = objective.loss(logits, targets, None)  # step 0: update on errors [0, 1, 1]
    lam = np.exp([0.0, 1.0, 1.0]) / np.exp([0.0, 1.0, 1.0]).sum()
    np.testing.assert_allclose(objective.lam.numpy(), lam, rtol=1e-6)
    tau = cfg.temperature
    worst = (torch.tensor(lam) * class_risks(logits, targets, tau)).sum()
    expected = 0.75 * kd_loss(logits, targets, tau) + 0.25 * worst
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    objective.loss(logits, targets, None)  # step 1: no update (period 2)
    np.testing.assert_allclose(objective.lam.numpy(), lam, rtol=1e-6)


def test_two_group_report_is_aligned_versus_conflicting_hand_computed():
    """AGRE-KD's Colored MNIST WGA: accuracy on the bias-conflicting images against the aligned ones."""
    from fedkd.metrics import bias_group_report, group_report

    y = np.array([0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, 0, 2, 2, 0, 0, 0, 2])
    aligned = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    # aligned: indices 0, 1, 2, 4, all right; conflicting: 3, 5, 6, 7, 8, 9, right at 5 and 9: 2 of 6
    two = bias_group_report(pred, y, aligned)
    assert two == {"bias_aligned_accuracy": 1.0, "bias_conflicting_accuracy": 2 / 6,
                   "two_group_worst_group_accuracy": 2 / 6}
    full = group_report(pred, y, y, ["c0", "c1", "c2"], aligned)
    assert full["two_group_worst_group_accuracy"] == 2 / 6 and full["accuracy"] == 0.6
    assert "two_group_worst_group_accuracy" not in group_report(pred, y, y, ["c0", "c1", "c2"])


def test_colored_mnist_reports_two_groups_and_the_ensemble_its_vote_and_members():
    from fedkd.baselines import ensemble_report
    from fedkd.data import build_benchmark
    from fedkd.validation import load_run_config

    bench = build_benchmark(load_run_config([]).dataset, 0)
    test = bench["test"]
    assert bench.bias_attribute and np.mean(test.a == test.y) == pytest.approx(0.1, abs=0.03)  # unbiased test
    # three teachers: two always say the colour's class, one is right: the mean ensemble follows the majority
    colour = torch.nn.functional.one_hot(torch.from_numpy(test.a), 10).float() * 5
    right = torch.nn.functional.one_hot(torch.from_numpy(test.y), 10).float() * 5
    report = ensemble_report(torch.stack([colour, colour, right]), bench)
    assert report["bias_aligned_accuracy"] == 1.0 and report["bias_conflicting_accuracy"] == 0.0
    assert report["two_group_worst_group_accuracy"] == 0.0
    assert report["vote"]["accuracy"] == report["accuracy"] == pytest.approx(np.mean(test.a == test.y))
    assert [m["two_group_worst_group_accuracy"] for m in report["members"]] == [0.0, 0.0, 1.0]
