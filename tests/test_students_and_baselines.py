"""Reliability softening (hand-computed) and the reference baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.app import app as client_app
from fedkd.baselines import _group_dro_selected_on_val, _trained_model, ensemble_report
from fedkd.data import Split, federated_data
from fedkd.distill import ReliabilitySoftened, kd_per_example, precision, recall
from fedkd.metrics import group_report, worst_group_accuracy
from fedkd.models import build_model
from fedkd.results import read_metrics, read_summary
from fedkd.training import predict_logits
from fedkd.validation import load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid


def test_recall_and_precision_per_class_hand_computed():
    # predictions 0, 1, 0, 1, 1 for labels 0, 0, 1, 1, 1
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.1, 0.9, 0.0], [0.3, 0.7, 0.0]])
    y = torch.tensor([0, 0, 1, 1, 1])
    # recall: class 0 1 of 2 right, class 1 2 of 3, class 2 absent -> 1
    np.testing.assert_allclose(recall(probs, y, 3).numpy(), [0.5, 2 / 3, 1.0], rtol=1e-6)
    # precision: "0" said twice, right once; "1" said three times, right twice; "2" never said -> 1
    np.testing.assert_allclose(precision(probs, y, 3).numpy(), [0.5, 2 / 3, 1.0], rtol=1e-6)
    # where they differ: a teacher that says "0" for everything has recall [1, 0] but precision [0.5, 1]
    always_zero = torch.tensor([[1.0, 0.0]] * 4)
    y2 = torch.tensor([0, 0, 1, 1])
    np.testing.assert_allclose(recall(always_zero, y2, 2).numpy(), [1.0, 0.0])
    np.testing.assert_allclose(precision(always_zero, y2, 2).numpy(), [0.5, 1.0])


def _softened(power=1.0):
    cfg = load_run_config(["student=softened", f"student.soften_power={power}"]).student
    y = np.array([0, 0, 1, 1])
    val = Split(x=np.zeros((4, 1, 2, 2), np.float32), y=y, g=y, a=y, source_index=np.arange(4))
    return ReliabilitySoftened(cfg, build_model("mlp", (1, 2, 2), 2, 0), val, 2)


def test_softened_targets_hand_computed():
    objective = _softened(power=2.0)
    # labels 0, 0, 1, 1; predictions 0, 0, 0, 1: precision [2/3, 1], recall [1, 0.5]
    objective.observe_val(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9]]))
    np.testing.assert_allclose(objective.alpha.numpy(), [4 / 9, 1.0], rtol=1e-6)  # softening by precision^2
    np.testing.assert_allclose(objective.beta.numpy(), [1.0, 0.25])  # labeled KD share by recall^2
    targets = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    # top class 0 (alpha 4/9): 4/9 [0.7, 0.3] + 5/9 [0.5, 0.5]; top class 1 (alpha 1): unchanged
    np.testing.assert_allclose(objective.soften(targets).numpy(),
                               [[4 / 9 * 0.7 + 5 / 18, 4 / 9 * 0.3 + 5 / 18], [0.2, 0.8]], rtol=1e-6)


def test_softened_loss_adds_the_per_class_mix_on_labeled_data():
    objective = _softened()
    val_probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])  # recall [0.5, 1], precision [1, 2/3]
    objective.observe_val(val_probs)
    logits, targets = torch.zeros(3, 2), torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]])
    loss = objective.loss(logits, targets, None)
    tau = objective.cfg.temperature
    transfer = kd_per_example(logits, objective.soften(targets), tau).mean()
    val_logits = objective.student(objective.val_x)  # batch_size >= 4: the whole split, in some order
    beta = objective.beta[objective.val_y]
    np.testing.assert_allclose(objective.beta.numpy(), [0.5, 1.0])
    ce = torch.nn.functional.cross_entropy(val_logits, objective.val_y, reduction="none")
    labeled = ((1 - beta) * ce + beta * kd_per_example(val_logits, val_probs, tau)).mean()
    assert loss.item() == pytest.approx((transfer + labeled).item(), rel=1e-5)


def test_ensemble_report_is_the_argmax_of_the_mean_probability():
    cfg = load_run_config([])
    bench = federated_data(cfg.dataset, cfg.partition, 10, cfg.seed).benchmark
    test = bench["test"]
    right = torch.nn.functional.one_hot(torch.from_numpy(test.y), 10).float() * 5
    wrong = torch.roll(right, 1, dims=1)
    logits = torch.stack([right, right, wrong])  # two of three teachers confident and right
    assert ensemble_report(logits, bench)["accuracy"] == 1.0
    expected = group_report((test.y + 1) % 10, test.y, test.g, bench.group_names, test.a == test.y)
    report = ensemble_report(torch.stack([wrong, wrong, right]), bench)
    assert {k: v for k, v in report.items() if k not in ("vote", "members")} == expected
    assert report["vote"]["accuracy"] == 0.0  # two of three say "y + 1"
    assert [m["accuracy"] for m in report["members"]] == [0.0, 0.0, 1.0]


def test_baselines_land_in_the_summary_marked(tmp_path):
    cfg = load_run_config(["federation.num_clients=2", "federation.num_rounds=1", "teacher.epochs=1",
                           "student.epochs=1", "baselines.server_only=true", "baselines.server_only_cnn_steps=2",
                           "baselines.centralized=true", f"runs_dir={tmp_path}"])
    summary = run_federation(InProcessGrid(client_app, 2), cfg)
    baselines = read_summary(summary["run_dir"])["baselines"]
    assert set(baselines) == {"ensemble", "server_only", "server_only_balanced", "centralized_erm",
                              "centralized_group_dro", "centralized_erm_dfr"}
    assert all(baselines[f"centralized_{n}"]["non_federated"] for n in ("erm", "group_dro", "erm_dfr"))
    assert baselines["centralized_erm_dfr"]["per_group_accuracy"] != baselines["centralized_erm"]["per_group_accuracy"]
    assert not any("non_federated" in baselines[n] for n in ("ensemble", "server_only", "server_only_balanced"))
    for name in ("server_only", "server_only_balanced"):  # the chosen recipe is the best cross-validated one
        scores = baselines[name]["cross_validation"]
        assert baselines[name]["recipe"] == max(scores, key=scores.get) and len(scores) == 7
    for report in baselines.values():  # WGA is the least of the per-group accuracies, the accuracy their weighted mean
        per_group, counts = report["per_group_accuracy"], report["group_counts"]
        assert report["worst_group_accuracy"] == min(per_group.values()) == per_group[report["worst_group"]]
        assert report["accuracy"] == pytest.approx(
            sum(per_group[g] * counts[g] for g in per_group) / sum(counts.values()))
    # The models trained on the whole pool beat chance (0.1) by far: measured 0.526 (centralized erm) to 0.759 (erm +
    # DFR), the ensemble of the two DFR teachers 0.662 (seed 0). The one-hot student (2 epochs on the 200 labeled
    # images) measured 0.100, so it has no level here. DFR on the group-balanced labeled split lifts the worst group
    # of the ERM model it retrains: 0.267 -> 0.589.
    assert min(baselines[n]["accuracy"] for n in ("ensemble", "centralized_erm", "centralized_group_dro",
                                                  "centralized_erm_dfr")) >= 0.35
    assert (baselines["centralized_erm_dfr"]["worst_group_accuracy"]
            > baselines["centralized_erm"]["worst_group_accuracy"] + 0.1)
    # each teacher alone, from the ensemble's answers: the same accuracy the client reported for its teacher
    members = baselines["ensemble"]["members"]
    reported = read_metrics(summary["run_dir"])[-1]["teachers"]
    assert [m["accuracy"] for m in members] == [t["test_accuracy"] for t in reported]
    assert summary["teachers"]["mean_two_group_worst_group_accuracy"] == pytest.approx(
        np.mean([m["two_group_worst_group_accuracy"] for m in members]))


def test_min_steps_raises_the_epochs_over_a_small_pool_to_whole_epochs():
    """student.min_steps: a 100-point pool at batch 32 is 4 steps an epoch, so min_steps=10 means 3 epochs
    (12 steps, the fewest whole epochs reaching 10); epochs already above it are kept; minibatches counted."""
    from fedkd.aggregators import Aggregator
    from fedkd.distill import KD, distill_epochs, distill_student
    from fedkd.training import sgd

    cfg = load_run_config(["student.batch_size=32", "student.epochs=2", "student.min_steps=10"]).student
    assert distill_epochs(cfg, 100) == 3
    assert distill_epochs(cfg, 1000) == 2  # 32 steps an epoch: epochs already make min_steps
    assert distill_epochs(cfg, 1) == 10  # a one-point pool: one step per epoch

    class CountingUniform(Aggregator):
        batches: list[int] = []

        def prepare(self, inputs) -> None:
            pass

        def targets(self, idx, student, x, student_logits):
            self.batches.append(len(idx))
            return torch.full((len(idx), 10), 0.1), None

    model = build_model("cnn", (3, 28, 28), 10, seed=0)
    counter = CountingUniform(load_run_config(["aggregator=mean"]).aggregator)
    x = np.random.default_rng(0).random((100, 3, 28, 28), dtype=np.float32)
    distill_student(model, sgd(model, 0.01, 0.0, 0.0), KD(cfg, model, None, 10), x, counter,
                    np.random.default_rng(0))
    assert len(counter.batches) == 12 and sum(counter.batches) == 300


@pytest.mark.parametrize("balance", ["none", "groups"])
def test_kd_labeled_adds_the_weighted_cross_entropy_of_a_labeled_minibatch(balance):
    """KD on the transfer batch + λ · CE on the labeled images its seeded generator draws, recomputed by hand: the
    plain mean, or with every group of the labeled split weighing the same (weights 1 / (G · n_g))."""
    from fedkd.distill import KDLabeled, KDLabeledConfig, kd_loss

    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 2])
    g = np.array([0, 0, 0, 1, 1, 2])  # group sizes 3, 2, 1
    val = Split(x=rng.normal(size=(6, 1, 2, 2)).astype(np.float32), y=y, g=g, a=np.zeros(6, int),
                source_index=np.arange(6))
    student = build_model("mlp", (1, 2, 2), 3, seed=0)
    cfg = KDLabeledConfig(objective="kd_labeled", arch="mlp", epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0,
                          batch_size=4, pretrained_path="", temperature=2.0, labeled_weight=0.5,
                          labeled_balance=balance)
    objective = KDLabeled(cfg, student, val, 3)
    logits = torch.randn(5, 3)
    targets = torch.softmax(torch.randn(5, 3), 1)
    got = objective.loss(logits, targets, None)

    idx = torch.randint(6, (4,), generator=torch.Generator().manual_seed(0)).numpy()
    with torch.no_grad():
        probs = torch.softmax(student(torch.from_numpy(val.x[idx])), 1).numpy()
    ce = -np.log(probs[np.arange(4), y[idx]])
    w = np.ones(4) if balance == "none" else 1.0 / (3 * np.bincount(g)[g[idx]])
    want = float(kd_loss(logits, targets, 2.0)) + 0.5 * float((w * ce).sum() / w.sum())
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)
    if balance == "groups":  # the draw holds images of groups of different sizes, so the weights matter
        assert len(set(w.tolist())) > 1


def test_centralized_group_dro_keeps_the_epoch_of_best_validation_worst_group_accuracy():
    """The kept model is the first epoch whose validation WGA no later epoch beats, and equals (bit for bit, one
    machine) group DRO trained from scratch for exactly that many epochs: the selection neither changes the
    trajectory nor keeps another epoch's weights."""
    cfg = load_run_config(["teacher.lr=0.05", "student.arch=mlp"])  # measured here: epoch 2 of 4 is kept
    bench = federated_data(cfg.dataset, cfg.partition, 10, cfg.seed).benchmark
    val = bench["val"]
    epochs, seed = 4, 7
    selected, epoch = _group_dro_selected_on_val(cfg, bench, epochs, seed)
    rerun = [_trained_model(cfg, bench, "pool", "group_dro", e, seed) for e in range(1, epochs + 1)]
    val_wga = [worst_group_accuracy(predict_logits(m, val.x).argmax(1).numpy(), val.y, val.g) for m in rerun]
    assert epoch == 1 + int(np.argmax(val_wga))  # np.argmax: the first of equals
    for p, q in zip(selected.state_dict().values(), rerun[epoch - 1].state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert len(set(val_wga)) > 1  # the epochs differ on validation, so a wrong epoch would be seen
