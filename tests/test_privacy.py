"""Privacy settings: calibration against Opacus' accountant, clipping, sensitivity, GNMax's costs, DP-SGD teachers,
the ε a run spends, budget caps, bad input, and the membership-inference check."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import FAST
from opacus.accountants import RDPAccountant
from rich.console import Console

from clients.app import app as client_app
from fedkd.accounting import (
    ORDERS,
    RdpLedger,
    calibrate_gaussian,
    dpsgd_noise_multiplier,
    gaussian_rdp,
    gnmax,
    gnmax_log_q,
    gnmax_rdp_data_dependent,
)
from fedkd.aggregators import AGGREGATORS
from fedkd.config import ConfigError
from fedkd.data import federated_data
from fedkd.local import train_local_teacher
from fedkd.membership import membership_auc
from fedkd.noise import project_to_simplex
from fedkd.privacy import GNMaxVoting, PrivacyPlan
from fedkd.results import read_metrics
from fedkd.soft_labels import clip_rows
from fedkd.teachers import DPSGD_HISTORY
from fedkd.validation import client_job, load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid

BUDGET = ["query=random", "query.per_round=40"]


def _run(overrides, tmp_path):
    cfg = load_run_config([*FAST, f"runs_dir={tmp_path}", *overrides])
    summary = run_federation(InProcessGrid(client_app, cfg.federation.num_clients), cfg,
                             console=Console(file=io.StringIO()))
    return summary, read_metrics(summary["run_dir"])


@pytest.mark.parametrize(("epsilon", "count"), [(0.5, 1), (2.0, 100), (8.0, 2000)])
def test_calibrated_sigma_gives_back_the_target_epsilon_from_opacus_accountant(epsilon, count):
    sigma = calibrate_gaussian(epsilon, 1e-5, count)
    accountant = RDPAccountant()
    accountant.history = [(sigma, 1.0, count)]
    assert accountant.get_epsilon(1e-5) == pytest.approx(epsilon, rel=0.01)
    assert accountant.get_epsilon(1e-5) <= epsilon  # the search keeps the side below the target


def test_dpsgd_sigma_for_a_target_gives_it_back_over_all_rounds():
    cfg = load_run_config([*FAST, "privacy=dpsgd", "privacy.epsilon=3", "federation.num_rounds=4"])
    job = client_job(cfg)
    sigma = dpsgd_noise_multiplier(job.privacy, shard_size=950, epochs_per_round=2, batch_size=32)
    accountant = RDPAccountant()
    accountant.history = [(sigma, 1 / 30, 4 * 2 * 30)]
    assert accountant.get_epsilon(1e-5) == pytest.approx(3.0, rel=0.01)


def test_gaussian_rdp_is_alpha_over_two_sigma_squared_per_release():
    assert np.allclose(gaussian_rdp(2.0, 5), 5 * ORDERS / (2 * 2.0**2))


def test_epsilon_grows_with_every_release_and_never_decreases():
    ledger = RdpLedger(1e-5)
    spent = [ledger.epsilon()]
    for count in (1, 10, 0, 100, 1):
        ledger.add(gaussian_rdp(5.0, count) if count else np.zeros_like(ORDERS), count)
        spent.append(ledger.epsilon())
    assert spent[0] == 0.0
    assert all(b >= a for a, b in zip(spent, spent[1:], strict=False))
    assert spent[2] > spent[1] > 0 and spent[4] > spent[3] and spent[3] == spent[2]


def test_clipping_bounds_the_norm_and_leaves_small_vectors_alone():
    probs = torch.softmax(torch.randn(200, 10) * 4, dim=-1)
    for c in (0.1, 0.5, 1.0):
        clipped = clip_rows(probs, c)
        assert (clipped.norm(dim=-1) <= c + 1e-6).all()
        inside = probs.norm(dim=-1) <= c
        assert torch.equal(clipped[inside], probs[inside])
        assert torch.allclose(clipped[~inside] / clipped[~inside].norm(dim=-1, keepdim=True),
                              probs[~inside] / probs[~inside].norm(dim=-1, keepdim=True))


def test_projection_onto_the_simplex_matches_a_bisection_on_the_threshold():
    v = torch.randn(50, 7, dtype=torch.float64) * 2
    p = project_to_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(50, dtype=torch.float64)) and (p >= 0).all()
    for row, out in zip(v, p, strict=True):  # the projection is max(v − θ, 0) with θ where the sum is 1
        low, high = float(row.min()) - 1, float(row.max())
        for _ in range(200):
            mid = (low + high) / 2
            low, high = (mid, high) if torch.clamp(row - mid, min=0).sum() > 1 else (low, mid)
        assert torch.allclose(out, torch.clamp(row - low, min=0), atol=1e-9)
    already = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64)
    assert torch.allclose(project_to_simplex(already), already)


def test_sensitivity_of_the_mean_is_root2_c_over_m_and_attained_and_any_simplex_aggregate_is_root2():
    assert AGGREGATORS["mean"].sensitivity(1.0, 10) == pytest.approx(math.sqrt(2) / 10)
    assert AGGREGATORS["mean"].sensitivity(0.5, 4) == pytest.approx(math.sqrt(2) * 0.5 / 4)
    assert AGGREGATORS["mean"].sensitivity(3.0, 4) == pytest.approx(math.sqrt(2) / 4)  # probabilities: norm <= 1
    for name in ("agre", "entropy_reduction", "vote"):
        assert AGGREGATORS[name].sensitivity(0.5, 10) == pytest.approx(math.sqrt(2))
    generator = torch.Generator().manual_seed(0)
    m, c = 5, 0.7
    worst = 0.0
    for _ in range(300):  # replacing one client never moves the clipped mean by more than the stated bound
        probs = torch.softmax(torch.randn(m, 10, generator=generator) * 5, -1)
        other = probs.clone()
        other[0] = torch.softmax(torch.randn(10, generator=generator) * 5, -1)
        moved = (clip_rows(probs, c).mean(0) - clip_rows(other, c).mean(0)).norm()
        worst = max(worst, float(moved))
    assert worst <= AGGREGATORS["mean"].sensitivity(c, m) + 1e-6
    one_hot = torch.eye(10)[:m]
    swapped = one_hot.clone()
    swapped[0] = torch.eye(10)[9]
    assert (clip_rows(one_hot, c).mean(0) - clip_rows(swapped, c).mean(0)).norm() == pytest.approx(
        AGGREGATORS["mean"].sensitivity(c, m))  # attained by two one-hot answers


def test_gnmax_data_independent_cost_is_lambda_over_sigma_squared_per_answer():
    cfg = load_run_config([*FAST, "aggregator=vote", "privacy=gnmax", "privacy.noise_multiplier=4",
                           "privacy.epsilon=null"])
    mechanism = GNMaxVoting(cfg.privacy)
    plan = PrivacyPlan(noise_multiplier=4.0, releases_per_query=1, planned_queries=0, planned_epsilon=None, cap=None)
    assert np.allclose(mechanism.query_rdp(plan, 7), 7 * ORDERS / 16.0)


def test_gnmax_log_q_and_data_dependent_bound_on_hand_made_votes():
    votes = np.array([6.0, 4.0, 0.0])
    expected = math.log(scipy.stats.norm.sf(2 / math.sqrt(2)) + scipy.stats.norm.sf(6 / math.sqrt(2)))
    assert gnmax_log_q(votes, 1.0) == pytest.approx(expected)
    data_independent = ORDERS / 16.0
    consensus = gnmax_rdp_data_dependent(gnmax_log_q(np.array([100.0, 0.0, 0.0]), 4.0), 4.0)
    split = gnmax_rdp_data_dependent(gnmax_log_q(np.array([5.0, 5.0, 0.0]), 4.0), 4.0)
    assert (consensus <= data_independent + 1e-12).all() and (consensus[:20] < data_independent[:20] / 10).all()
    assert np.allclose(split, data_independent)  # a tie: q is large and the bound falls back


def test_confident_gnmax_answers_only_above_the_threshold():
    rng = np.random.default_rng(0)
    votes = np.array([[10.0, 0.0], [5.0, 5.0], [9.0, 1.0]])
    none = gnmax(votes, 1e-6, threshold=20.0, threshold_sigma=1e-6, rng=rng)
    assert not none.answered.any() and (none.labels == -1).all()
    some = gnmax(votes, 1e-6, threshold=8.5, threshold_sigma=1e-6, rng=rng)
    assert some.answered.tolist() == [True, False, True] and some.labels.tolist() == [0, -1, 0]
    every = gnmax(votes, 1e-6, threshold=0.0, threshold_sigma=0.0, rng=rng)
    assert every.answered.all() and every.labels[[0, 2]].tolist() == [0, 0]


def test_dpsgd_teacher_epsilon_is_opacus_own_report_and_meets_the_target():
    cfg = load_run_config([*FAST, "privacy=dpsgd", "privacy.epsilon=4", "federation.num_rounds=2"])
    job = client_job(cfg)
    state, first = train_local_teacher(job, 0, 1, None)
    state, second = train_local_teacher(job, 0, 2, state)
    accountant = RDPAccountant()
    accountant.history = [(s, q, int(n)) for s, q, n in state["extra"][DPSGD_HISTORY].tolist()]
    assert second.epsilon == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert 0 < first.epsilon < second.epsilon
    assert second.epsilon == pytest.approx(4.0, rel=0.01)  # the calibration covered both rounds
    assert second.class_counts == [0] * len(second.class_counts)  # no exact statistic of the shard leaves


def test_dpsgd_dfr_teacher_is_the_dp_base_with_a_head_refitted_on_public_data():
    """Public DFR under DP-SGD: the base is exactly the DP-SGD ERM teacher in every round (the refitted head never
    enters the private training), the teacher differs from it only in the head, and ε is the base's."""
    rounds = {}
    for teacher in ("erm", "dfr"):
        cfg = load_run_config([*FAST, "privacy=dpsgd", "privacy.epsilon=4", "federation.num_rounds=2",
                               f"teacher={teacher}", *(["teacher.dfr_steps=20"] if teacher == "dfr" else [])])
        job = client_job(cfg)
        state, _ = train_local_teacher(job, 0, 1, None)
        rounds[teacher] = train_local_teacher(job, 0, 2, state)
    (erm_state, erm_report), (dfr_state, dfr_report) = rounds["erm"], rounds["dfr"]
    for name, tensor in erm_state["teacher"].items():
        assert torch.equal(dfr_state["base"][name], tensor), name
        assert torch.equal(dfr_state["teacher"][name], tensor) != name.startswith("head."), name
    assert dfr_report.epsilon == erm_report.epsilon


def test_dpsgd_refuses_dfr_on_the_clients_own_shard():
    with pytest.raises(ConfigError, match="teacher.objective"):
        load_run_config([*FAST, "privacy=dpsgd", "privacy.epsilon=4", "teacher=dfr", "teacher.dfr_data=local"])


def test_noisy_class_counts_are_released_once_and_accounted():
    cfg = load_run_config([*FAST, "aggregator=support", "privacy=dpsgd", "privacy.epsilon=null",
                           "privacy.noise_multiplier=1.0", "privacy.count_noise=5"])
    job = client_job(cfg)
    true = np.bincount(federated_data(cfg.dataset, cfg.partition, 3, 0).shard(0).y, minlength=10)
    state, first = train_local_teacher(job, 0, 1, None)
    _, second = train_local_teacher(job, 0, 2, state)
    assert first.class_counts == second.class_counts and first.class_counts != true.tolist()
    assert np.abs(np.array(first.class_counts) - true).max() < 30
    without = load_run_config([*FAST, "privacy=dpsgd", "privacy.epsilon=null", "privacy.noise_multiplier=1.0"])
    _, plain = train_local_teacher(client_job(without), 0, 1, None)
    assert first.epsilon > plain.epsilon


@pytest.mark.parametrize("mechanism", ["central_gaussian", "local_gaussian"])
def test_a_huge_epsilon_gives_the_non_private_student(mechanism, tmp_path):
    plain, _ = _run(BUDGET, tmp_path / "plain")
    private, records = _run([*BUDGET, f"privacy={mechanism}", "privacy.epsilon=null",
                             "privacy.noise_multiplier=1e-7"], tmp_path / "private")
    assert records[-1]["epsilon_spent"] > 1e6
    a = torch.load(f"{plain['run_dir']}/student.pt")
    b = torch.load(f"{private['run_dir']}/student.pt")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), key
    assert plain["test"]["accuracy"] == private["test"]["accuracy"]


def test_a_run_spends_epsilon_round_by_round_and_stops_at_its_cap(tmp_path):
    _, records = _run([*BUDGET, "privacy=central_gaussian", "privacy.epsilon=null", "privacy.noise_multiplier=2",
                       "federation.num_rounds=3"], tmp_path / "open")
    spent = [r["epsilon_spent"] for r in records]
    assert spent[0] < spent[1] < spent[2]
    assert records[-1]["privacy"]["invocations"] == 120
    ledger = RdpLedger(1e-5)
    ledger.add(gaussian_rdp(2.0, 120), 120)
    assert spent[-1] == pytest.approx(ledger.epsilon())
    cap = (spent[0] + spent[1]) / 2
    summary, capped = _run([*BUDGET, "privacy=central_gaussian", f"privacy.epsilon={cap}",
                            "privacy.noise_multiplier=2", "federation.num_rounds=3"], tmp_path / "capped")
    assert all(r["epsilon_spent"] <= cap for r in capped) and summary["epsilon_spent"] <= cap
    assert capped[1]["query"]["stopped_by_privacy_budget"] and 0 < capped[1]["query"]["num_new"] < 40
    assert capped[2]["query"]["num_new"] == 0


def test_gnmax_run_counts_answered_and_refused_queries(tmp_path):
    summary, records = _run([*BUDGET, "aggregator=vote", "privacy=gnmax", "privacy.epsilon=null",
                             "privacy.noise_multiplier=1", "privacy.threshold=2.5", "privacy.threshold_sigma=0.5"],
                            tmp_path)
    for r in records:
        assert r["query"]["answered"] + r["query"]["refused"] == r["query"]["num_new"] == 40
        assert r["privacy"]["epsilon_data_dependent"] <= r["epsilon_spent"] + 1e-9
    assert summary["baselines"]["ensemble"]["skipped"]
    assert all(t["class_counts"] == [0] * 10 and t["group_counts"] == [0] * 20 for t in records[-1]["teachers"])


@pytest.mark.parametrize(("override", "key"), [
    (["privacy=central_gaussian", "privacy.epsilon=0"], "privacy.epsilon"),
    (["privacy=central_gaussian", "privacy.epsilon=-1"], "privacy.epsilon"),
    (["privacy=central_gaussian", "privacy.delta=0.5"], "privacy.delta"),  # 3 clients: δ must be < 1/3
    (["privacy=dpsgd", "privacy.delta=0.01"], "privacy.delta"),  # ~950 examples per shard
    (["privacy=local_gaussian", "privacy.clip=0"], "privacy.clip"),
    (["privacy=central_gaussian", "privacy.clip=-1"], "privacy.clip"),
    (["privacy=gnmax"], "aggregator.name"),  # gnmax replaces the aggregator: needs aggregator=vote
    (["privacy=central_gaussian", "aggregator=support"], "aggregator.name"),  # client counts unbounded
    (["privacy=dpsgd", "aggregator=support"], "privacy.count_noise"),
    (["privacy=dpsgd", "teacher=group_dro"], "teacher.objective"),
    (["privacy=central_gaussian", "query=rad"], "query.name"),
    (["privacy=central_gaussian", "privacy.epsilon=null"], "privacy.epsilon"),
    (["privacy=central_gaussian", "privacy.epsilon=0.01", "privacy.noise_multiplier=0.5"], "privacy.epsilon"),
])
def test_bad_privacy_input_is_one_clear_error_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config([*FAST, *override])


def test_membership_auc_on_hand_made_losses():
    members = np.array([0.1, 0.2, 0.3, 0.4])
    nonmembers = np.array([1.0, 2.0, 0.35, 3.0])
    groups = np.array([0, 0, 1, 1])
    out = membership_auc(members, nonmembers, groups, groups, ("a", "b"))
    assert out["auc"] == pytest.approx(15 / 16)  # one pair of 16 ranked wrongly: 0.4 (member) > 0.35
    assert out["per_group_auc"] == {"a": 1.0, "b": pytest.approx(3 / 4)}
    assert membership_auc(members, members, groups, groups, ("a", "b"))["auc"] == 0.5


def test_a_private_run_is_reproducible(tmp_path):
    overrides = [*BUDGET, "privacy=local_gaussian", "privacy.epsilon=4"]
    _, first = _run(overrides, tmp_path / "a")
    _, second = _run(overrides, tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        a.pop("wall_seconds"), b.pop("wall_seconds")
        assert a == b
