"""Privacy settings: calibration against Opacus' accountant, clipping, sensitivity, GNMax's costs, DP-SGD teachers,
the ε a run spends, budget caps, bad input, and the membership-inference check."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import FAST
from opacus.accountants import RDPAccountant
from rich.console import Console

from clients.app import app as client_app
from fedkd.accounting import (
    OPACUS_DEFAULT_ORDERS,
    ORDERS,
    RdpLedger,
    calibrate_gaussian,
    dpsgd_noise_multiplier,
    epsilon_from_rdp_classic,
    gaussian_rdp,
    gnmax,
    gnmax_log_q,
    gnmax_rdp_data_dependent,
    threshold_log_pr_answered,
    threshold_rdp_data_dependent,
)
from fedkd.aggregators import AGGREGATORS
from fedkd.checkpoint import SERVER_CHECKPOINT, load
from fedkd.config import ConfigError
from fedkd.data import federated_data
from fedkd.local import train_local_teacher
from fedkd.membership import attack_metrics, lira_offline_scores, logit_confidence, membership_auc
from fedkd.noise import project_to_simplex
from fedkd.privacy import GNMaxVoting, PrivacyPlan
from fedkd.results import read_metrics
from fedkd.run_groups import METRIC
from fedkd.soft_labels import AggregationInputs, clip_rows
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
    spent = accountant.get_epsilon(1e-5, alphas=list(ORDERS))
    assert spent == pytest.approx(epsilon, rel=0.01)
    assert spent <= epsilon  # the search keeps the side below the target


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


def _theorem6_plain(q: float, sigma: float, order: float) -> float:
    """Papernot et al. 2018, Theorem 6 in its plain (not log-space) form, with Proposition 10's μ₂ = σ·sqrt(ln 1/q),
    μ₁ = μ₂ + 1 and ε_i = μ_i/σ² (GNMax's RDP at order μ): A = (1 − q)/(1 − (q·e^ε₂)^((μ₂−1)/μ₂)),
    B = e^ε₁/q^(1/(μ₁−1)), RDP(λ) ≤ ln((1 − q)·A^(λ−1) + q·B^(λ−1))/(λ − 1); the data-independent λ/σ² where the
    theorem's conditions (λ < μ₁, μ₂ > 1, q ≤ e^((μ₂−1)ε₂)/(μ₁/(μ₁−1)·μ₂/(μ₂−1))^μ₂, ln 1/q > ε₂) fail."""
    independent = order / sigma**2
    mu2 = sigma * math.sqrt(math.log(1 / q))
    mu1 = mu2 + 1
    eps1, eps2 = mu1 / sigma**2, mu2 / sigma**2
    if not (order < mu1 and mu2 > 1 and math.log(1 / q) > eps2
            and q <= math.exp((mu2 - 1) * eps2) / (mu1 / (mu1 - 1) * mu2 / (mu2 - 1)) ** mu2):
        return independent
    a = (1 - q) / (1 - (q * math.exp(eps2)) ** ((mu2 - 1) / mu2))
    b = math.exp(eps1) / q ** (1 / (mu1 - 1))
    return min(independent, math.log((1 - q) * a ** (order - 1) + q * b ** (order - 1)) / (order - 1))


def test_confident_gnmax_data_dependent_epsilon_matches_the_papers_formulas_on_hand_made_votes():
    """250 teachers, MNIST's T = 200, σ1 = 150, σ2 = 40 (Papernot et al. 2018): four queries of clear consensus and
    one split vote. q of GNMax by Proposition 7 (a union of Gaussian tails, computed here with erfc), q of the check
    as the less likely of passing / failing, each step's RDP by Theorem 6 in plain form, summed, converted with
    Proposition 3 of Mironov 2017; against the ledger's log-space computation at the same orders."""
    sigma, threshold, sigma1, delta = 40.0, 200.0, 150.0, 1e-5
    votes = np.array([[250, 0, 0], [240, 6, 4], [249, 1, 0], [230, 20, 0], [120, 110, 20]], dtype=np.float64)
    expected = np.zeros(len(ORDERS))
    for v in votes:
        top = v.max()
        q_gnmax = min(sum(0.5 * math.erfc((top - n) / (math.sqrt(2) * math.sqrt(2) * sigma))
                          for n in np.delete(v, v.argmax())), 1 - 1 / len(v))
        passing = 0.5 * math.erfc((threshold - top) / (math.sqrt(2) * sigma1))
        q_check = min(passing, 1 - passing)
        for i, order in enumerate(ORDERS):
            expected[i] += _theorem6_plain(q_check, math.sqrt(2) * sigma1, order)
            expected[i] += _theorem6_plain(q_gnmax, sigma, order)
    ours = np.zeros(len(ORDERS))
    for v, lp in zip(votes, threshold_log_pr_answered(votes, threshold, sigma1), strict=True):
        ours += threshold_rdp_data_dependent(float(lp), sigma1) + gnmax_rdp_data_dependent(gnmax_log_q(v, sigma),
                                                                                            sigma)
    assert np.allclose(ours, expected, rtol=1e-9, atol=1e-12)
    data_independent = len(votes) * (ORDERS / sigma**2 + ORDERS / (2 * sigma1**2))
    assert epsilon_from_rdp_classic(ours, delta) == pytest.approx(
        min(expected + math.log(1 / delta) / (ORDERS - 1)))
    assert epsilon_from_rdp_classic(ours, delta) < epsilon_from_rdp_classic(data_independent, delta)
    # the split vote costs its data-independent price in full; consensus queries cost far less
    split = gnmax_rdp_data_dependent(gnmax_log_q(votes[4], sigma), sigma)
    assert np.allclose(split, ORDERS / sigma**2)
    low = ORDERS <= 10  # where the δ term of the conversion has the most weight
    assert (gnmax_rdp_data_dependent(gnmax_log_q(votes[0], sigma), sigma)[low] < split[low] / 100).all()


def test_threshold_check_cost_falls_back_to_the_data_independent_price_near_the_threshold():
    at_threshold = threshold_log_pr_answered(np.array([[200.0, 50.0]]), 200.0, 150.0)[0]
    assert at_threshold == pytest.approx(math.log(0.5))
    assert np.allclose(threshold_rdp_data_dependent(at_threshold, 150.0), ORDERS / (2 * 150.0**2))
    far = threshold_log_pr_answered(np.array([[1000.0, 0.0]]), 200.0, 10.0)[0]
    assert far == 0.0 and not threshold_rdp_data_dependent(far, 10.0).any()  # a certain outcome costs nothing


def test_wide_orders_reach_the_hundreds_where_confident_answers_are_cheapest():
    assert OPACUS_DEFAULT_ORDERS == RDPAccountant.DEFAULT_ALPHAS  # written out so that clients need not import Opacus
    assert set(OPACUS_DEFAULT_ORDERS) <= set(ORDERS.tolist())
    assert ORDERS.max() >= 500 and (np.diff(ORDERS) > 0).all()
    one_answer = ORDERS / 40.0**2  # one GNMax answer at σ = 40: ε(λ) = λ/1600 + ln(1e5)/(λ − 1), best at λ ≈ 137
    narrow = 63 / 1600 + math.log(1e5) / 62  # ε(λ) still falls at 63, the largest of Opacus' orders
    assert epsilon_from_rdp_classic(one_answer, 1e-5) == pytest.approx(
        min(o / 1600 + math.log(1e5) / (o - 1) for o in ORDERS))
    assert epsilon_from_rdp_classic(one_answer, 1e-5) < 0.18 < narrow  # narrow = 0.225


def test_confident_gnmax_answers_only_above_the_threshold():
    rng = np.random.default_rng(0)
    votes = np.array([[10.0, 0.0], [5.0, 5.0], [9.0, 1.0]])
    none = gnmax(votes, 1e-6, threshold=20.0, threshold_sigma=1e-6, rng=rng)
    assert not none.answered.any() and (none.labels == -1).all()
    some = gnmax(votes, 1e-6, threshold=8.5, threshold_sigma=1e-6, rng=rng)
    assert some.answered.tolist() == [True, False, True] and some.labels.tolist() == [0, -1, 0]
    every = gnmax(votes, 1e-6, threshold=None, threshold_sigma=None, rng=rng)
    assert every.answered.all() and every.labels[[0, 2]].tolist() == [0, 0]


def test_confident_gnmax_release_counts_refusals_and_correct_labels_per_group():
    """Four teachers, three points: a unanimous vote on class 0 (true 0), a 2–2 split (true 1), a 3–1 vote for
    class 2 whose true class is 1. With T = 2.5 and tiny noise the split is refused and both others answered; the
    third answer is wrong."""
    cfg = load_run_config([*FAST, "aggregator=vote", "privacy=gnmax", "privacy.epsilon=null",
                           "privacy.noise_multiplier=1e-3", "privacy.threshold=2.5", "privacy.threshold_sigma=1e-3",
                           "federation.num_clients=4"])
    top = torch.tensor([[0, 0, 2], [0, 1, 2], [0, 0, 2], [0, 1, 1]])  # [teacher, point]: each teacher's top class
    logits = torch.nn.functional.one_hot(top, 3).float() * 5.0
    inputs = AggregationInputs(teacher_logits=logits, temperature=1.0, class_counts=torch.zeros(4, 3),
                               groups=np.array([0, 1, 1]), group_names=("a", "b"), labels=np.array([0, 1, 1]))
    mechanism = GNMaxVoting(cfg.privacy)
    plan = PrivacyPlan(noise_multiplier=1e-3, releases_per_query=1, planned_queries=3, planned_epsilon=None, cap=None)
    release = mechanism.release(plan, inputs, None, None, None, torch.Generator(), np.random.default_rng(0))
    assert release.answered.tolist() == [True, False, True]
    assert release.stats["per_group"] == {"a": {"asked": 1, "answered": 1, "correct": 1},
                                          "b": {"asked": 2, "answered": 1, "correct": 0}}


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
                               f"teacher={teacher}", *(["teacher.dfr_subsets=2"] if teacher == "dfr" else [])])
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
        per_group = r["query"]["per_group"].values()
        assert sum(g["asked"] for g in per_group) == 40
        assert sum(g["answered"] for g in per_group) == r["query"]["answered"]
        assert all(g["correct"] <= g["answered"] <= g["asked"] for g in per_group)
    assert summary["baselines"]["ensemble"]["skipped"]
    assert all(t["class_counts"] == [0] * 10 and t["group_counts"] == [0] * 20 for t in records[-1]["teachers"])


def test_gnmax_releases_its_data_dependent_epsilon_through_smooth_sensitivity(tmp_path):
    """Confident GNMax with the smooth-sensitivity release: each round reports the release's expected ε, the std of
    its noise and its own cost, never a noisy value; the summary holds the one noisy ε that may be published. The
    data-dependent RDP the release sums at its order equals the ledger's data-dependent curve there, computed by
    fedkd.accounting on every answer (a second computation), and the expected ε is that RDP plus the release's cost
    plus ln(1/δ)/(λ − 1)."""
    order, beta, sigma_ss = 2.0, 0.1, 3.0
    summary, records = _run([*BUDGET, "aggregator=vote", "privacy=gnmax", "privacy.epsilon=null",
                             "privacy.noise_multiplier=1", "privacy.threshold=2.5", "privacy.threshold_sigma=0.5",
                             f"privacy.smooth_sensitivity_order={order}", f"privacy.smooth_sensitivity_beta={beta}",
                             f"privacy.smooth_sensitivity_sigma={sigma_ss}"], tmp_path)
    rounds = [r["privacy"]["smooth_sensitivity"] for r in records]
    assert all("epsilon_released" not in r for r in rounds)
    assert [r["data_dependent_rdp"] for r in rounds] == sorted(r["data_dependent_rdp"] for r in rounds)
    final = summary["privacy"]["smooth_sensitivity"]
    delta = summary["delta"]
    ledger = load(Path(summary["run_dir"]) / SERVER_CHECKPOINT)["parts"]["privacy"]["ledger"]
    assert ORDERS[np.searchsorted(ORDERS, order)] == order
    at_order = ledger["rdp_data_dependent"][int(np.searchsorted(ORDERS, order))]
    assert final["data_dependent_rdp"] == pytest.approx(at_order, rel=1e-9)
    release_rdp = order * math.exp(2 * beta) / sigma_ss**2 + (beta * order - 0.5 * math.log(1 - 2 * order * beta)) / (
        order - 1)  # Theorem 23 by hand
    assert final["release_rdp"] == pytest.approx(release_rdp, rel=1e-12)
    assert final["epsilon_expected"] == pytest.approx(
        final["data_dependent_rdp"] + release_rdp + math.log(1 / delta) / (order - 1), rel=1e-12)
    assert final["smooth_sensitivity"] > 0
    assert final["noise_std"] == pytest.approx(final["smooth_sensitivity"] * sigma_ss)
    z = np.random.default_rng([0, 11]).standard_normal()
    assert final["epsilon_released"] == pytest.approx(final["epsilon_expected"] + final["noise_std"] * z)
    assert (final["conversion"], final["threshold_charged"]) == ("classic", "realised")
    # `fedkd report` names each ε for what it is: the guarantee, the data-dependent one, the released one
    assert METRIC["epsilon_spent"].read(summary) == summary["epsilon_spent"]
    details = summary["privacy"]
    assert METRIC["epsilon_data_dependent_classic"].read(summary) == details["epsilon_data_dependent_classic"]
    assert METRIC["epsilon_released"].read(summary) == final["epsilon_released"]
    assert METRIC["epsilon_released"].read(records[-1]) is None  # a round's line holds no noisy draw


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
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=0"], "privacy.noise_multiplier"),
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=-2"], "privacy.noise_multiplier"),
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.threshold=0",
      "privacy.threshold_sigma=1"], "privacy.threshold"),
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.threshold=-3",
      "privacy.threshold_sigma=1"], "privacy.threshold"),
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.threshold=4",
      "privacy.threshold_sigma=1"], "privacy.threshold"),  # 3 teachers: a top count never reaches 4
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.threshold=2",
      "privacy.threshold_sigma=0"], "privacy.threshold_sigma"),
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.threshold=2"],
     "privacy.threshold_sigma"),
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.threshold_sigma=2"],
     "privacy.threshold_sigma"),  # σ1 without a threshold does nothing
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.threshold_charge=expected"],
     "privacy.threshold_charge"),  # no threshold: every query is answered
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.threshold=2",
      "privacy.threshold_sigma=1", "privacy.threshold_charge=mean"], "privacy.threshold_charge"),
    (["privacy=gnmax", "aggregator=vote", "privacy.threshold=2", "privacy.threshold_sigma=1"],
     "privacy.noise_multiplier"),
    (["privacy=gnmax", "aggregator=vote", "federation.num_clients=100000"], "federation.num_clients"),
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.smooth_sensitivity_order=3"],
     "privacy.smooth_sensitivity_beta"),  # λ, β and σ_ss go together
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=4", "privacy.smooth_sensitivity_order=14",
      "privacy.smooth_sensitivity_beta=0.1", "privacy.smooth_sensitivity_sigma=6"],
     "privacy.smooth_sensitivity_beta"),  # Theorem 23 needs λ < 1/(2β) = 5
    (["privacy=gnmax", "aggregator=vote", "privacy.noise_multiplier=20", "privacy.smooth_sensitivity_order=25",
      "privacy.smooth_sensitivity_beta=0.01", "privacy.smooth_sensitivity_sigma=6"],
     "privacy.smooth_sensitivity_order"),  # condition C6 fails at σ = 20, 10 classes, λ = 25 (the authors' check)
    (["privacy=central_gaussian", "aggregator=reliability"], "aggregator.name"),  # reads unreleased answers
    (["privacy=local_gaussian", "aggregator=reliability"], "aggregator.name"),
    (["aggregator=reliability", "aggregator.min_agreement=1.5"], "aggregator.min_agreement"),  # a share of weight
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


def test_logit_confidence_is_the_log_odds_of_the_true_class():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, -1.0]], dtype=np.float32)
    phi = logit_confidence(torch.nn.Identity(), logits, np.array([0, 2]))
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = math.exp(-1) / (1 + math.exp(3) + math.exp(-1))
    assert phi == pytest.approx([math.log(p0 / (1 - p0)), math.log(p1 / (1 - p1))], rel=1e-6)


def test_lira_offline_scores_and_attack_metrics_on_hand_made_cases():
    shadows = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0]])  # μ_out = 0, per-example variance 1
    assert lira_offline_scores(np.array([2.0, 0.0]), shadows) == pytest.approx(
        [scipy.stats.norm.cdf(2.0), 0.5])
    out = attack_metrics(np.array([0.9, 0.8, 0.3]), np.array([0.1, 0.2, 0.35, 0.4]), fprs=(0.01,))
    assert out["auc"] == pytest.approx(10 / 12)  # 0.3 ranks below two of the four non-members
    assert out["tpr_at_fpr_0.01"] == pytest.approx(2 / 3)  # a threshold at 0.8 takes no non-member


def test_lira_separates_members_shifted_above_their_out_distribution():
    """φ of members one shift above N(0, 1), the distribution of non-members and of every shadow: the attack's AUC
    is Pr[N(2, 1) > N(0, 1)] = Φ(2/√2) ≈ 0.921."""
    rng = np.random.default_rng(0)
    n = 4000
    shadows = rng.normal(0.0, 1.0, (16, 2 * n))
    target = np.r_[rng.normal(2.0, 1.0, n), rng.normal(0.0, 1.0, n)]
    scores = lira_offline_scores(target, shadows)
    out = attack_metrics(scores[:n], scores[n:])
    assert out["auc"] == pytest.approx(scipy.stats.norm.cdf(2 / math.sqrt(2)), abs=0.01)
    assert out["tpr_at_fpr_0.01"] > 0.2  # a 1 % FPR threshold sits at ≈ 2.33: Pr[N(2, 1) > 2.33] ≈ 0.37


def test_a_private_run_is_reproducible(tmp_path):
    overrides = [*BUDGET, "privacy=local_gaussian", "privacy.epsilon=4"]
    _, first = _run(overrides, tmp_path / "a")
    _, second = _run(overrides, tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        a.pop("wall_seconds"), b.pop("wall_seconds")
        assert a == b


def test_reliability_under_dpsgd_teachers_costs_no_more_epsilon(tmp_path):
    """DP-SGD covers every answer of a teacher, on the labeled split too: reliability runs, weighs the teachers
    from their labeled answers, and spends exactly the ε of the same teachers distilled by the mean."""
    overrides = ["privacy=dpsgd", "teacher=dfr", "teacher.dfr_subsets=2", "federation.num_rounds=1",
                 "baselines.ensemble=false"]
    _, (mean,) = _run([*overrides, "aggregator=mean"], tmp_path / "mean")
    _, (reliable,) = _run([*overrides, "aggregator=reliability"], tmp_path / "reliability")
    stats = reliable["aggregator_stats"]
    reliability = np.array(stats["class_reliability"])
    assert reliability.shape == (3, 10) and ((reliability > 0) & (reliability < 1)).all()
    assert sum(stats["mean_weight_per_teacher"]) == pytest.approx(1.0)
    assert 0 < stats["upweighted_fraction"] < 1 and stats["max_example_weight"] > 1
    assert math.isfinite(mean["epsilon_spent"]) and reliable["epsilon_spent"] == mean["epsilon_spent"]
