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
