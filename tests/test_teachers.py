"""Teacher objectives on hand-computed cases; DFR's group balance and kept ERM base."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fedkd.data import Split
from fedkd.dfr import (
    DFR_L2_GRID,
    group_balanced_indices,
    group_balanced_weights,
    held_out_split,
    split_in_halves,
    tuned_last_layer,
)
from fedkd.models import build_model
from fedkd.teachers import GroupDRO, LogitAdjusted, TeacherModels, class_priors, train_teacher
from fedkd.validation import load_run_config


def _split(y, g, n_features=4, seed=0):
    rng = np.random.default_rng(seed)
    y, g = np.asarray(y), np.asarray(g)
    x = rng.normal(size=(len(y), 1, 2, 2)).astype(np.float32)
    return Split(x=x, y=y, g=g, a=np.zeros_like(y), source_index=np.arange(len(y)))


def _teacher_cfg(name, **overrides):
    return load_run_config([f"teacher={name}", *[f"teacher.{k}={v}" for k, v in overrides.items()]]).teacher


def test_class_priors_are_laplace_smoothed():
    np.testing.assert_allclose(class_priors(np.array([0, 0, 0, 1]), 3), [4 / 7, 2 / 7, 1 / 7])


def test_logit_adjusted_loss_hand_computed():
    shard = _split([0, 0, 0, 1], [0, 0, 0, 1])  # smoothed priors (3+1)/6, (1+1)/6 = [2/3, 1/3]
    objective = LogitAdjusted(shard, 2, 2, _teacher_cfg("balanced"))
    loss = objective.loss(torch.zeros(1, 2), torch.tensor([1]), torch.tensor([1]))
    # CE(y=1, [log 2/3, log 1/3]) = -log(1/3 / 1) = log 3
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)
    half = LogitAdjusted(shard, 2, 2, _teacher_cfg("balanced", la_tau=0.5))
    # tau 0.5: logits [0.5 log 2/3, 0.5 log 1/3]; p(1) = sqrt(1/3) / (sqrt(2/3) + sqrt(1/3)) = 1 / (1 + sqrt 2)
    assert half.loss(torch.zeros(1, 2), torch.tensor([1]), None).item() == pytest.approx(math.log(1 + math.sqrt(2)))


def test_group_dro_weight_update_hand_computed():
    objective = GroupDRO(_split([0, 1], [0, 1]), 2, 3, _teacher_cfg("group_dro", dro_eta=1.0))
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [0.0, 0.0]])
    y, g = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1])
    # group 0: CE ln 2 and ln(4/3), mean ln(8/3) / 2; group 1: ln 2; group 2 absent: 0
    losses = [math.log(8 / 3) / 2, math.log(2), 0.0]
    loss = objective.loss(logits, y, g)
    unnormalised = [math.exp(v) / 3 for v in losses]
    q = [u / sum(unnormalised) for u in unnormalised]
    np.testing.assert_allclose(objective.q.numpy(), q, rtol=1e-5)
    assert loss.item() == pytest.approx(sum(a * b for a, b in zip(q, losses, strict=True)), rel=1e-5)


def test_group_balanced_subset():
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    idx = group_balanced_indices(groups, np.random.default_rng(0))
    assert np.bincount(groups[idx]).tolist() == [2, 2, 2] and len(set(idx)) == 6


def test_held_out_split_is_fixed_and_disjoint():
    shard = _split(np.arange(50) % 2, np.arange(50) % 4)
    train, held = held_out_split(shard, 0.2)
    again, held_again = held_out_split(shard, 0.2)
    assert len(held) == 10 and len(train) == 40
    assert set(train.source_index).isdisjoint(held.source_index)
    assert np.array_equal(held.source_index, held_again.source_index)


def _models(seed=0):
    return TeacherModels(teacher=build_model("mlp", (1, 2, 2), 2, seed), base=None)


@pytest.mark.parametrize("dfr_data", ["public", "local"])
def test_dfr_keeps_its_erm_base_and_changes_only_the_head(dfr_data):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    g = y * 2 + (rng.random(200) < 0.1)
    shard = _split(y, g)
    public = _split(np.arange(40) % 2, np.arange(40) % 4, seed=1)
    cfg = _teacher_cfg("dfr", epochs=2, dfr_data=dfr_data)
    models = _models()
    train_teacher(models, shard, 2, 4, cfg, False, rng, lambda: build_model("mlp", (1, 2, 2), 2, 1), public=public)
    assert models.base is not None and models.base is not models.teacher
    for (name, p_base), (_, p_teacher) in zip(models.base.named_parameters(), models.teacher.named_parameters(),
                                              strict=True):
        same = torch.equal(p_base, p_teacher)
        assert same != name.startswith("head."), name


@pytest.mark.parametrize("objective", ["balanced", "group_dro"])
def test_erm_base_is_kept_only_when_asked(objective):
    shard = _split(np.arange(40) % 2, np.arange(40) % 2)
    cfg = _teacher_cfg(objective, epochs=1)
    rng = np.random.default_rng(0)
    new = lambda: build_model("mlp", (1, 2, 2), 2, 3)  # noqa: E731
    without = _models()
    train_teacher(without, shard, 2, 2, cfg, False, rng, new)
    assert without.base is None
    with_base = _models()
    train_teacher(with_base, shard, 2, 2, cfg, True, rng, new)
    assert with_base.base is not None and with_base.base is not with_base.teacher


def test_erm_teacher_is_its_own_base_whether_asked_or_not():
    shard = _split(np.arange(40) % 2, np.arange(40) % 2)
    cfg = _teacher_cfg("erm", epochs=1)
    new = lambda: build_model("mlp", (1, 2, 2), 2, 3)  # noqa: E731
    for keep_base in (False, True):
        models = _models()
        train_teacher(models, shard, 2, 2, cfg, keep_base, np.random.default_rng(0), new)
        assert models.base is models.teacher


def test_public_dfr_base_is_the_erm_teacher_trained_on_the_whole_shard():
    """dfr_data=public trains its base exactly as teacher=erm trains its teacher (whole shard, same seeds)."""
    rng_y = np.random.default_rng(3)
    y = rng_y.integers(0, 2, 120)
    shard = _split(y, y * 2 + (rng_y.random(120) < 0.2))
    public = _split(np.arange(40) % 2, np.arange(40) % 4, seed=1)
    new = lambda: build_model("mlp", (1, 2, 2), 2, 1)  # noqa: E731
    erm = TeacherModels(teacher=new(), base=None)
    train_teacher(erm, shard, 2, 4, _teacher_cfg("erm", epochs=2), False, np.random.default_rng(5), new)
    dfr = TeacherModels(teacher=new(), base=None)
    train_teacher(dfr, shard, 2, 4, _teacher_cfg("dfr", epochs=2), False, np.random.default_rng(5), new,
                  public=public)
    for p_erm, p_base in zip(erm.teacher.parameters(), dfr.base.parameters(), strict=True):
        assert torch.equal(p_erm, p_base)
    assert float(dfr.extra["dfr_l2"]) in DFR_L2_GRID


def test_public_dfr_needs_the_public_split():
    shard = _split(np.arange(20) % 2, np.arange(20) % 2)
    with pytest.raises(ValueError, match="public labeled split"):
        train_teacher(_models(), shard, 2, 2, _teacher_cfg("dfr", epochs=1), False, np.random.default_rng(0),
                      lambda: build_model("mlp", (1, 2, 2), 2, 1))


def test_group_balanced_weights_give_every_group_equal_mass():
    groups = np.array([0, 0, 0, 1, 2, 2])
    w = group_balanced_weights(groups)
    np.testing.assert_allclose(w, [1 / 9, 1 / 9, 1 / 9, 1 / 3, 1 / 6, 1 / 6], rtol=1e-6)
    assert [w[groups == k].sum() for k in range(3)] == pytest.approx([1 / 3] * 3)


def test_split_in_halves_halves_every_group():
    split = _split(np.arange(30) % 2, np.array([0] * 10 + [1] * 7 + [2] * 13))
    first, second = split_in_halves(split, np.random.default_rng(0))
    assert np.bincount(first.g).tolist() == [5, 3, 6] and np.bincount(second.g).tolist() == [5, 4, 7]
    assert set(first.source_index).isdisjoint(second.source_index)


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_tuned_last_layer_keeps_the_head_with_the_best_selection_wga():
    """Recomputed independently: every penalty's head fitted on the first half, scored by WGA on the second; the
    chosen strength is the argmax and the model carries exactly its head."""
    from fedkd.dfr import _balanced_head
    from fedkd.metrics import worst_group_accuracy
    from fedkd.models import FeatureClassifier

    rng = np.random.default_rng(0)

    def data(n):
        y = rng.integers(0, 2, n)
        minority = rng.random(n) < 0.2
        spurious = np.where(minority, 1 - y, y)
        x = np.stack([(2 * y - 1) * 0.4 + rng.normal(size=n), 3.0 * (2 * spurious - 1) + rng.normal(size=n),
                      rng.normal(size=n), rng.normal(size=n)], 1)
        return Split(x=x.reshape(n, 1, 2, 2).astype(np.float32), y=y, g=y * 2 + minority, a=spurious,
                     source_index=np.arange(n))

    fit, select = data(60), data(200)
    model = FeatureClassifier(_Identity(), 4, 2)
    start = copy.deepcopy(model.head)
    grid = (3.0, 0.3, 0.0)
    chosen = tuned_last_layer(model, fit, select, steps=300, lr=0.05, grid=grid)
    x_fit, y_fit = torch.from_numpy(fit.x).flatten(1), torch.from_numpy(fit.y)
    weights = torch.from_numpy(group_balanced_weights(fit.g))
    scores, heads = [], []
    for l2 in grid:
        head = _balanced_head(start, x_fit, y_fit, weights, 300, 0.05, l2)
        pred = head(torch.from_numpy(select.x).flatten(1)).argmax(1).numpy()
        scores.append(worst_group_accuracy(pred, select.y, select.g))
        heads.append(head)
    assert len(set(scores)) > 1, scores  # the choice matters on this case
    best = int(np.argmax(scores))
    assert chosen == grid[best]
    assert torch.allclose(model.head.weight, heads[best].weight)
