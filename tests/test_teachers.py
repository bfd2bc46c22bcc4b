"""Teacher objectives on hand-computed cases; DFR's group balance and kept ERM base."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedkd.data import Split
from fedkd.dfr import (
    ABSENT_CLASS_MARGIN,
    DFR_C_GRID,
    deep_feature_reweighting,
    group_balanced_indices,
    group_balanced_weights,
    held_out_split,
    split_in_halves,
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
    assert float(dfr.extra["dfr_c"]) in DFR_C_GRID


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


def _spurious(n, rng, classes=2, minority=0.2):
    """Features [signal of the class, strong spurious cue, two noise columns]: the cue agrees with the class except
    in the minority groups (g = 2 y + minority)."""
    y = rng.integers(0, classes, n)
    flip = rng.random(n) < minority
    cue = np.where(flip, (y + 1) % classes, y)
    x = np.stack([(2 * y - 1) * 0.6 + rng.normal(size=n), 3.0 * (2 * cue - 1) + rng.normal(size=n),
                  rng.normal(size=n), rng.normal(size=n)], 1)
    return Split(x=x.reshape(n, 1, 2, 2).astype(np.float32), y=y, g=y * 2 + flip, a=cue,
                 source_index=np.arange(n))


def _authors_dfr(labeled_x, labeled, fit_x, fit, select_x, select, train_x, retrains, rng, num_classes, balance):
    """The DFR authors' dfr_on_validation_tune / _eval (deep_feature_reweighting's source), written again from
    their text with scikit-learn, one binary classifier per class by hand: the same draws from ``rng`` in the same
    order, nothing shared with fedkd.dfr but the group-balanced subset and weights. ``balance="weights"``: every
    row, weighted 1 / (G n_g) times the row count, one fit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def binary(x, y, c, w):
        fitted = LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear", random_state=0).fit(x, y, sample_weight=w)
        return fitted.coef_[0], fitted.intercept_[0]

    def fit_ovr(x, y, c, w=None):
        if num_classes == 2:  # one classifier: class 1's score against class 0's zero
            coef, intercept = binary(x, y, c, w)
            return np.stack([np.zeros_like(coef), coef]), np.array([0.0, intercept])
        heads = [binary(x, (y == k).astype(int), c, w) for k in range(num_classes)]
        return np.stack([h[0] for h in heads]), np.array([h[1] for h in heads])

    def rows(split):
        if balance == "subsample":
            return group_balanced_indices(split.g, rng), None
        return np.arange(len(split)), group_balanced_weights(split.g) * len(split)

    idx, w_fit = rows(fit)
    scaler = StandardScaler().fit(fit_x[idx])
    wga = []
    for c in DFR_C_GRID:
        w, b = fit_ovr(scaler.transform(fit_x[idx]), fit.y[idx], c, w_fit)
        pred = (scaler.transform(select_x) @ w.T + b).argmax(1)
        wga.append(min((pred == select.y)[select.g == k].mean() for k in np.unique(select.g)))
    c = DFR_C_GRID[int(np.argmax(wga))]
    scaler = StandardScaler().fit(train_x)
    heads = [fit_ovr(scaler.transform(labeled_x[i]), labeled.y[i], c, w)
             for i, w in (rows(labeled) for _ in range(retrains if balance == "subsample" else 1))]
    return c, wga, scaler, np.mean([h[0] for h in heads], 0), np.mean([h[1] for h in heads], 0)


@pytest.mark.parametrize(("classes", "balance"), [(2, "subsample"), (3, "subsample"), (3, "weights")])
def test_dfr_equals_the_authors_procedure_written_again(classes, balance):
    """deep_feature_reweighting against the authors' procedure recomputed on the same features (an identity body):
    the same C, chosen by worst-group accuracy over the grid (and the choice matters here), and the refitted head
    equal to the averaged classifiers with the standardisation of the training data's features folded in."""
    from fedkd.models import FeatureClassifier

    rng = np.random.default_rng(0)
    labeled, train = _spurious(240, rng, classes), _spurious(400, rng, classes, 0.02)
    test = _spurious(300, rng, classes)
    model = FeatureClassifier(_Identity(), 4, classes)
    c = deep_feature_reweighting(model, labeled, train, retrains=4, generator=np.random.default_rng(7),
                                 balance=balance)

    flat = lambda split: split.x.reshape(len(split), -1).astype(np.float64)  # noqa: E731
    expected_rng = np.random.default_rng(7)
    fit, select = split_in_halves(labeled, expected_rng)
    want_c, wga, scaler, w, b = _authors_dfr(flat(labeled), labeled, flat(fit), fit, flat(select), select,
                                             flat(train), 4, expected_rng, classes, balance)
    assert len(set(wga)) > 1, wga  # the choice of C matters on this case
    assert c == want_c
    ours = model(torch.from_numpy(test.x)).detach().double().numpy()
    theirs = scaler.transform(flat(test)) @ w.T + b
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_dfr_head_never_predicts_a_class_absent_from_its_refit_data():
    """A class missing from the held-out data (a label-skewed client) gets no weights and a bias ABSENT_CLASS_MARGIN
    below every score the present classes take there."""
    from fedkd.models import FeatureClassifier

    rng = np.random.default_rng(1)
    labeled = _spurious(200, rng, 2)
    model = FeatureClassifier(_Identity(), 4, 3)  # class 2 never appears
    deep_feature_reweighting(model, labeled, labeled, retrains=3, generator=np.random.default_rng(0))
    logits = model(torch.from_numpy(labeled.x)).detach().double()
    assert torch.all(model.head.weight[2] == 0)
    assert float(logits[:, 2].max()) <= float(logits[:, :2].min()) - ABSENT_CLASS_MARGIN + 1e-3
