"""The smooth-sensitivity release of PATE's data-dependent cost (fedkd.local_sensitivity, fedkd.smooth_sensitivity)
against the authors' code, their test files, the conditions it must refuse, and invariants checked by brute force on
small ensembles.

Reference numbers come from running the authors' code, tensorflow/privacy at commit
03035d5d4a271ac795dab80f5bc1cef82fc3d462, research/pate_2018 (core.py, smooth_sensitivity.py,
ICLR2018/smooth_sensitivity_table.py), unmodified, with this project's venv python (numpy 2.4.6, scipy 1.17.1; absl
and sympy are installed there):

    git --git-dir=<tensorflow/privacy> archive 03035d5d4a27 research/pate_2018 | tar -x -C /tmp/pate_ref
    cd /tmp/pate_ref && .venv/bin/python ref.py

where ref.py is (HAND and _synthetic as in this file):

    import math, sys
    import numpy as np
    sys.path[:0] = ["research/pate_2018", "research/pate_2018/ICLR2018"]
    import core, smooth_sensitivity as ss, smooth_sensitivity_table as table
    def release(votes, w, T, s1, lam=14.0, s2=40.0, beta=0.0329, sigma_ss=6.23, delta=1e-5, n=250,
                running_max=False):
        ind1 = T is None or core.is_data_independent_always_opt_threshold(n, T, s1, lam)
        ind2 = core.is_data_independent_always_opt_gaussian(n, votes.shape[1], s2, lam)
        rdp, ls = 0.0, np.zeros(n)
        for v, wi in zip(votes, w):  # the sums of table._find_optimal_smooth_sensitivity_parameters
            if T is not None and ind1:
                rdp += core.compute_rdp_data_independent_threshold(s1, lam)
            elif T is not None:
                rdp += core.compute_rdp_threshold(core.compute_logpr_answered(T, s1, v), s1, lam)
                l1 = ss.compute_local_sensitivity_bounds_threshold(v, n, T, s1, lam)
                ls += np.maximum.accumulate(l1) if running_max else l1
            if wi and ind2:
                rdp += wi * core.rdp_data_independent_gaussian(s2, lam)
            elif wi:
                rdp += wi * core.rdp_gaussian(core.compute_logq_gaussian(v, s2), s2, lam)
                ls += wi * ss.compute_local_sensitivity_bounds_gnmax(v, n, s2, lam)
        cost = ss.compute_rdp_of_smooth_sensitivity_gaussian(beta, sigma_ss, lam)
        return rdp, ss.compute_discounted_max(beta, ls), cost, rdp + cost + math.log(1 / delta) / (lam - 1)
    for h in HAND:
        v = np.array(h); g = ss.compute_local_sensitivity_bounds_gnmax(v, 250, 40.0, 14.0)
        t = np.maximum.accumulate(ss.compute_local_sensitivity_bounds_threshold(v, 250, 150.0, 30.0, 14.0))
        print(h, core.rdp_gaussian(core.compute_logq_gaussian(v, 40.0), 40.0, 14.0),
              g[[0, 5, 40, 80, 120, 249]].tolist(), g.sum(), ss.compute_discounted_max(0.0329, g),
              t[[0, 20, 60, 249]].tolist(), t.sum(), ss.compute_discounted_max(0.0329, t))
    votes, z = _synthetic(300, 250, 10, 2018)
    print(release(votes, votes.max(1) + 150 * z >= 200, 200.0, 150.0))
    print(release(votes, votes.max(1) + 30 * z >= 150, 150.0, 30.0),
          release(votes, votes.max(1) + 30 * z >= 150, 150.0, 30.0, running_max=True))
    print(release(votes[:100], np.ones(100), None, None))
    print(table._find_optimal_smooth_sensitivity_parameters(votes, 0 * votes, 250, 200.0, 150.0, 40.0, 1e-5,
                                                            True, False, 14.0))
    print(release(votes, np.exp([core.compute_logpr_answered(200.0, 150.0, v) for v in votes]), 200.0, 150.0))
    print([ss.check_conditions(*a) for a in [(40, 10, 14.0), (10, 10, 14.0), (100, 10, 20.5), (5, 10, 3.0)]])

The authors' threshold bounds are compared through np.maximum.accumulate: this module's A⁽ᵈ⁾ is the running maximum
(see the module docstring), which their arrays are not.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.special

from fedkd import local_sensitivity as lsm
from fedkd import smooth_sensitivity as ssm
from fedkd.accounting import (
    ORDERS,
    gnmax_log_q,
    gnmax_rdp_data_dependent,
    threshold_log_pr_answered,
    threshold_rdp_data_dependent,
)

TEACHERS, SIGMA, ORDER, BETA, SIGMA_SS, DELTA = 250, 40.0, 14.0, 0.0329, 6.23, 1e-5
RTOL = 1e-8

HAND = [[250] + [0] * 9, [126, 124] + [0] * 8, [200, 30, 20] + [0] * 7, [100, 90, 60], [130, 120],
        [90, 80, 40, 40], [50, 50, 50, 50, 50], [240, 10]]

# Per HAND row: Theorem 6 at λ = 14 (core.rdp_gaussian); GNMax A⁽ᵈ⁾ at d = 0, 5, 40, 80, 120, 249, its sum and SS_β;
# threshold (T = 150, σ₁ = 30) running-max A⁽ᵈ⁾ at d = 0, 20, 60, 249, its sum and SS_β.
PLATEAU = 0.0006699072431377868
THRESHOLD_MAX = 0.0004277875495159421
HAND_REFERENCE = [
    (3.120157896191148e-05,
     [4.912975446198e-06, 7.214131215977295e-06, 0.00011257376026873667, PLATEAU, PLATEAU, PLATEAU],
     0.13198891838213345, 6.847901330469935e-05,
     [2.3295310441037e-05, 0.00012202048239260159, THRESHOLD_MAX, THRESHOLD_MAX], 0.09554639524247924,
     0.00010395173373465467),
    (0.00875, [0.0, 0.0, 0.0, PLATEAU, PLATEAU, PLATEAU], 0.13177601205430356, 0.00011335667455841962,
     [0.0, 0.0, THRESHOLD_MAX, THRESHOLD_MAX], 0.09340350048785612, 0.00014928044121410673),
    (0.0014255489696715848,
     [0.00016155818023757661, 0.0002194666584224383, PLATEAU, PLATEAU, PLATEAU, PLATEAU],
     0.15941082366735895, 0.0002802873274954207,
     [0.0, THRESHOLD_MAX, THRESHOLD_MAX, THRESHOLD_MAX], 0.1045259767752706, 0.00035115463875864586),
    (0.00875, [0.0, 0.0, 0.0, 0.0005618391568290217, 0.0005618391568290217, 0.0005618391568290217],
     0.10480712308070927, 6.841660861198364e-05,
     [0.0, THRESHOLD_MAX, THRESHOLD_MAX, THRESHOLD_MAX], 0.1045259767752706, 0.00035115463875864586),
    (0.00875, [0.0, 0.0, 0.0, 0.0005049163407853802, 0.0005049163407853802, 0.0005049163407853802],
     0.10255271888159313, 0.0001075647243906572,
     [0.0, 0.0, THRESHOLD_MAX, THRESHOLD_MAX], 0.09169235028979233, 0.00013087290909465917),
    (0.00875, [0.0, 0.0, 0.0, 0.0005928049377123303, 0.0005928049377123303, 0.0005928049377123303],
     0.1070868664010862, 5.925590298084929e-05,
     [0.00037892143921376513, THRESHOLD_MAX, THRESHOLD_MAX, THRESHOLD_MAX], 0.10684901210142894,
     0.00038758171063108356),
    (0.00875, [0.0, 0.0, 0.0, 0.0, 0.0006138872069670186, 0.0006138872069670186],
     0.08712290565184055, 1.7008465815770753e-05,
     [2.3295310441037e-05, 0.00012202048239260115, THRESHOLD_MAX, THRESHOLD_MAX], 0.09554639524247924,
     0.00010395173373465467),
    (1.7842238571590475e-05,
     [2.600865597573801e-06, 4.834273646621125e-06, 0.00014640579779241184, 0.0005049163407853802,
      0.0005049163407853802, 0.0005049163407853802],
     0.10309681178613349, 6.539927144336483e-05,
     [5.6723185688308106e-05, 0.00023038980847115862, THRESHOLD_MAX, THRESHOLD_MAX], 0.09946138218019271,
     0.0001444490272476157),
]


def _synthetic(n_queries: int, n_teachers: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded vote histograms (a random top class holding a random 20–100 % share, the rest spread at random) and
    standard-normal threshold noise; RandomState, whose streams numpy keeps fixed."""
    rs = np.random.RandomState(seed)
    votes = np.empty((n_queries, n_classes), dtype=np.int64)
    for i in range(n_queries):
        conf = rs.uniform(0.2, 1.0)
        p = (1 - conf) * rs.dirichlet(np.ones(n_classes))
        p[rs.randint(n_classes)] += conf
        votes[i] = rs.multinomial(n_teachers, p)
    return votes, rs.normal(0.0, 1.0, n_queries)


VOTES, NOISE = _synthetic(300, TEACHERS, 10, 2018)


# ------------------------------------------------------------------------------------ agreement with the authors


@pytest.mark.parametrize(("hist", "ref"), list(zip(HAND, HAND_REFERENCE, strict=True)))
def test_one_query_matches_authors_code(hist, ref):
    rdp, gnmax_at, gnmax_sum, gnmax_ss, thr_at, thr_sum, thr_ss = ref
    v = np.array(hist)
    assert lsm.gnmax_rdp_at_order(gnmax_log_q(v, SIGMA), SIGMA, ORDER) == pytest.approx(rdp, rel=RTOL)
    g = lsm.gnmax_local_sensitivity_bounds(v, TEACHERS, SIGMA, ORDER)
    assert g.shape == (TEACHERS,)
    np.testing.assert_allclose(g[[0, 5, 40, 80, 120, 249]], gnmax_at, rtol=RTOL, atol=0)
    assert g.sum() == pytest.approx(gnmax_sum, rel=RTOL)
    assert ssm.smooth_sensitivity(g, BETA) == pytest.approx(gnmax_ss, rel=RTOL)
    t = lsm.threshold_local_sensitivity_bounds(v, TEACHERS, 150.0, 30.0, ORDER)
    np.testing.assert_allclose(t[[0, 20, 60, 249]], thr_at, rtol=RTOL, atol=0)
    assert t.sum() == pytest.approx(thr_sum, rel=RTOL)
    assert ssm.smooth_sensitivity(t, BETA) == pytest.approx(thr_ss, rel=RTOL)


def _check_release(rel: ssm.SmoothSensitivityRelease, rdp: float, ss: float, cost: float, eps: float) -> None:
    assert rel.rdp == pytest.approx(rdp, rel=RTOL)
    assert rel.smooth_sensitivity == pytest.approx(ss, rel=RTOL)
    assert rel.release_rdp == pytest.approx(cost, rel=RTOL)
    assert rel.epsilon == pytest.approx(eps, rel=RTOL)
    assert rel.noise_std == pytest.approx(rel.smooth_sensitivity * rel.sigma_ss, rel=1e-12)
    assert rel.epsilon == pytest.approx(rel.rdp + rel.release_rdp + math.log(1 / rel.delta) / (rel.order - 1))


def test_confident_gnmax_release_on_300_queries_matches_authors_code():
    """The paper's MNIST row (T = 200, σ₁ = 150, σ = 40, λ = 14, β = 0.0329, σ_ss = 6.23, δ = 10⁻⁵) on seeded votes:
    the threshold step is data-independent at λ = 14 there, the answers' cost carries all the sensitivity."""
    answered = VOTES.max(1) + 150.0 * NOISE >= 200.0
    assert answered.sum() == 118
    rel = ssm.release_epsilon(VOTES, SIGMA, ORDER, BETA, SIGMA_SS, DELTA, answered=answered, threshold=200.0,
                              threshold_sigma=150.0)
    _check_release(rel, 0.6286938689159399, 0.019532392154966577, 0.5183929399476159, 2.032696460015112)


def test_release_with_data_dependent_threshold_is_the_authors_sum_of_running_maxima():
    """T = 150, σ₁ = 30: the threshold checks' cost is data-dependent too. The SS matches the authors' sums with
    each threshold array replaced by its running maximum; their raw arrays give a smaller SS (0.0585 < 0.0666),
    which misses queries whose sensitivity peaks at a smaller distance than the sum's."""
    answered = VOTES.max(1) + 30.0 * NOISE >= 150.0
    assert answered.sum() == 170
    rel = ssm.release_epsilon(VOTES, SIGMA, ORDER, BETA, SIGMA_SS, DELTA, answered=answered, threshold=150.0,
                              threshold_sigma=30.0)
    _check_release(rel, 2.2478905021101254, 0.06661469160097581, 0.5183929399476159, 3.6518930932092974)
    assert rel.smooth_sensitivity > 0.05848195856442465 * 1.1  # the authors' raw arrays


def test_plain_gnmax_release_matches_authors_code():
    rel = ssm.release_epsilon(VOTES[:100], SIGMA, ORDER, BETA, SIGMA_SS, DELTA)
    _check_release(rel, 0.5822880604706255, 0.011856318654560726, 0.5183929399476159, 1.9862906515697976)


def test_parameter_search_matches_authors_on_expected_cost():
    """The authors' Table 2 search (smooth_sensitivity_table._find_optimal_smooth_sensitivity_parameters): expected
    cost, each answer weighted by Pr[answered]; (β, SS_β, σ_ss) of their last iteration, and the expected release
    at the MNIST row's (β, σ_ss)."""
    weights = np.exp(threshold_log_pr_answered(VOTES, 200.0, 150.0))
    rdp, ls = lsm.data_dependent_cost(VOTES, SIGMA, ORDER, answered=weights, threshold=200.0, threshold_sigma=150.0)
    assert rdp == pytest.approx(0.6160873385663151, rel=RTOL)
    rel = ssm.release_epsilon(VOTES, SIGMA, ORDER, BETA, SIGMA_SS, DELTA, answered=weights, threshold=200.0,
                              threshold_sigma=150.0)
    _check_release(rel, 0.6160873385663151, 0.017287354151549975, 0.5183929399476159, 2.0200899296654873)
    beta, sigma_ss = ssm.tune_release(rdp, ls, ORDER)
    assert beta == pytest.approx(0.029285714285714304, rel=RTOL)
    assert ssm.smooth_sensitivity(ls, beta) == pytest.approx(0.01866921733938835, rel=RTOL)
    assert sigma_ss == pytest.approx(9.26430954247202, rel=RTOL)


# ------------------------------------------------------------------------------------ the authors' test files

# smooth_sensitivity_test.py, test_compute_local_sensitivity_bounds_threshold: counts [20, 10, 0] (30 teachers),
# σ₁ = 2, λ = 10, thresholds 16, 2, 50, and counts [19.5, −5.1, 0] at 10.1. Written to 9 digits; their code gives
# 9.0154326596e-02 where the first answer says 9.01543247e-02 (their own test fails there at rtol 1e-8 with
# today's scipy), hence 5e-8 for these.
AUTHORS_THRESHOLD = [
    ([20, 10, 0], 16.0, [0] * 3 + [1.48454129e-04, 1.47826870e-02, 3.94153241e-02, 6.45775697e-02, 9.01543247e-02,
                                   1.16054002e-01, 1.42180452e-01, 1.42180452e-01, 1.48454129e-04, 1.47826870e-02,
                                   3.94153241e-02, 6.45775697e-02, 9.01543266e-02, 1.16054000e-01, 1.42180452e-01,
                                   1.68302106e-01, 1.93127860e-01] + [0] * 10),
    ([20, 10, 0], 2.0, [1.60212079e-01, 2.07021132e-01, 2.07021132e-01, 1.93127860e-01, 1.68302106e-01,
                        1.42180452e-01, 1.16054002e-01, 9.01543247e-02, 6.45775697e-02, 3.94153241e-02,
                        1.47826870e-02, 1.48454129e-04] + [0] * 18),
    ([20, 10, 0], 50.0, [1.35750725752e-19, 1.88990500499e-17, 2.05403154065e-15, 1.74298153642e-13,
                         1.15489723995e-11, 5.97584949325e-10, 2.41486826748e-08, 7.62150641922e-07,
                         1.87846248741e-05, 0.000360973025976, 0.000360973025976, 2.76377015215e-50,
                         1.00904975276e-53, 2.87254164748e-57, 6.37583360761e-61, 1.10331620211e-64,
                         1.48844393335e-68, 1.56535552444e-72, 1.28328011060e-76, 8.20047697109e-81] + [0] * 10),
    ([19.5, -5.1, 0], 10.1, [0.0620410301, 0.0875807131, 0.113451958, 0.139561671, 0.1657074530, 0.1908244840,
                             0.2070270720, 0.207027072, 0.169718100, 0.0575152142, 0.00678695871] + [0] * 6
     + [0.000536304908, 0.0172181073, 0.041909870] + [0] * 10),
]


def test_gnmax_bounds_reproduce_authors_test_file():
    """smooth_sensitivity_test.py, test_compute_local_sensitivity_bounds_gnmax: "going right" from [10, 0, 0]
    (σ = 0.5, λ = 1.5) and "going left" from [1000, 500, 300, 200, 0] (σ = 250, λ = 10, 2000 teachers)."""
    right = lsm.gnmax_local_sensitivity_bounds(np.array([10, 0, 0]), 10, 0.5, 1.5)
    np.testing.assert_allclose(right, [3.13503646e-17, 1.60178280e-08, 5.90681786e-03] + [5.99981308e+00] * 7,
                               rtol=RTOL, atol=0)
    left = lsm.gnmax_local_sensitivity_bounds(np.array([1000, 500, 300, 200, 0]), 2000, 250.0, 10.0)
    np.testing.assert_allclose(left, [0.0] * 298 + [2.77693450548e-7, 2.10853979548e-6] + [2.73113623988e-6] * 1700,
                               rtol=RTOL, atol=0)


@pytest.mark.parametrize(("counts", "threshold", "answer"), AUTHORS_THRESHOLD)
def test_threshold_bounds_reproduce_authors_test_file_as_running_maximum(counts, threshold, answer):
    answer = np.array(answer, dtype=np.float64)
    assert np.any(np.diff(answer) < 0)  # theirs drop with d: the top count moved by exactly ±d
    out = lsm.threshold_local_sensitivity_bounds(np.array(counts, dtype=np.float64), 30, threshold, 2.0, 10.0)
    np.testing.assert_allclose(out, np.maximum.accumulate(answer), rtol=5e-8, atol=0)


@pytest.mark.parametrize(("sigma", "num_classes", "order", "expected"), [
    (20.0, 10, 25.0, (True, False)),  # smooth_sensitivity_test.py, test_check_conditions
    (30.0, 10, 25.0, (True, True)),  # same
    (40.0, 10, 14.0, (True, True)),  # the rest: the authors' check_conditions, ref.py's last line
    (10.0, 10, 14.0, (True, False)),
    (100.0, 10, 20.5, (True, True)),
    (5.0, 10, 3.0, (True, True)),
])
def test_conditions_c5_c6_agree_with_authors(sigma, num_classes, order, expected):
    assert lsm.check_gnmax_conditions(sigma, num_classes, order) == expected


# ------------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("beta", "sigma_ss", "order", "message"), [
    (-0.01, 6.0, 14.0, r"β ≥ 0"),
    (0.03, 0.0, 14.0, r"σ_ss > 0"),
    (0.03, 6.0, 1.0, r"λ > 1"),
    (0.0329, 6.0, 16.0, r"λ < 1/\(2β\)"),
    (0.05, 6.0, 10.0, r"λ < 1/\(2β\)"),
])
def test_theorem23_conditions_refused(beta, sigma_ss, order, message):
    with pytest.raises(ValueError, match=message):
        ssm.smooth_sensitivity_gaussian_rdp(beta, sigma_ss, order)
    with pytest.raises(ValueError, match=message):
        ssm.release_epsilon(VOTES[:3], SIGMA, order, beta, sigma_ss, DELTA)


def test_release_refuses_when_condition_c6_fails():
    with pytest.raises(ValueError, match="condition C6 fails"):
        ssm.release_epsilon(VOTES[:3], 20.0, 25.0, 0.01, 10.0, DELTA)
    rel = ssm.release_epsilon(VOTES[:3], 20.0, 25.0, 0.01, 10.0, DELTA, check_conditions=False)
    assert rel.smooth_sensitivity > 0


def test_release_refuses_malformed_input():
    with pytest.raises(ValueError, match="say which queries were answered"):
        ssm.release_epsilon(VOTES[:3], SIGMA, ORDER, BETA, SIGMA_SS, DELTA, threshold=200.0, threshold_sigma=150.0)
    with pytest.raises(ValueError, match="go together"):
        ssm.release_epsilon(VOTES[:3], SIGMA, ORDER, BETA, SIGMA_SS, DELTA, threshold=200.0)
    with pytest.raises(ValueError, match="δ must be in"):
        ssm.release_epsilon(VOTES[:3], SIGMA, ORDER, BETA, SIGMA_SS, 0.0)
    with pytest.raises(ValueError, match="different teacher counts"):
        ssm.release_epsilon(np.array([[3, 1], [2, 1]]), SIGMA, ORDER, BETA, SIGMA_SS, DELTA)
    with pytest.raises(ValueError, match="one entry per query"):
        ssm.release_epsilon(VOTES[:3], SIGMA, ORDER, BETA, SIGMA_SS, DELTA, answered=np.ones(2, dtype=bool))


# ------------------------------------------------------------------------------------------------ invariants


def test_theorem23_formula_and_monotonicity():
    """β = 0 is the Gaussian mechanism's λ/σ_ss² (f + SS·N(0, σ_ss²) with a fixed SS); the cost grows with β and
    λ, and falls with σ_ss."""
    assert ssm.smooth_sensitivity_gaussian_rdp(0.0, 5.0, 10.0) == pytest.approx(10.0 / 25.0, rel=1e-15)
    b, s, lam = 0.02, 7.0, 12.0
    expected = lam * math.exp(2 * b) / s**2 + (b * lam - 0.5 * math.log(1 - 2 * lam * b)) / (lam - 1)
    assert ssm.smooth_sensitivity_gaussian_rdp(b, s, lam) == pytest.approx(expected, rel=1e-14)
    costs = [ssm.smooth_sensitivity_gaussian_rdp(beta, 6.0, 14.0) for beta in (0.0, 0.01, 0.02, 0.03, 0.035)]
    assert np.all(np.diff(costs) > 0)
    costs = [ssm.smooth_sensitivity_gaussian_rdp(0.03, sigma, 14.0) for sigma in (2.0, 4.0, 8.0)]
    assert np.all(np.diff(costs) < 0)


def test_bounds_non_decreasing_and_smooth_sensitivity_between_its_ends():
    for v in VOTES[:60]:
        for ls in (lsm.gnmax_local_sensitivity_bounds(v, TEACHERS, SIGMA, ORDER),
                   lsm.threshold_local_sensitivity_bounds(v, TEACHERS, 150.0, 30.0, ORDER)):
            assert np.all(np.diff(ls) >= 0)
            sss = [ssm.smooth_sensitivity(ls, beta) for beta in (0.0, 0.01, BETA, 0.1)]
            assert sss[0] == ls.max()
            assert np.all(np.diff(sss) <= 0)
            assert ls[0] <= sss[-1] <= ls.max()


def _histograms(n: int, m: int) -> np.ndarray:
    return np.array([c for c in itertools.product(range(n + 1), repeat=m) if sum(c) == n])


@pytest.mark.parametrize("kind", ["gnmax", "threshold"])
def test_bounds_cover_every_histogram_within_distance_d(kind):
    """Brute force over all 91 histograms of 12 teachers and 3 classes: A⁽ᵈ⁾(x) ≥ |f(y) − f(y′)| for every y within
    d changed votes of x and every neighbour y′ of y, f the released per-query cost. σ = 2, λ = 2 (C5–C6 hold) for
    GNMax; T = 8, σ₁ = 2, λ = 3 for the threshold check."""
    n, m = 12, 3
    hists = _histograms(n, m)
    index = {tuple(h): i for i, h in enumerate(hists)}
    if kind == "gnmax":
        assert lsm.check_gnmax_conditions(2.0, m, 2.0) == (True, True)
        f = np.array([lsm.data_dependent_cost(h[None], 2.0, 2.0)[0] for h in hists])
    else:
        f = np.array([lsm.threshold_rdp_at_order(scipy.special.log_ndtr(-(8.0 - h.max()) / 2.0), 2.0, 3.0)
                      for h in hists])
    local = np.zeros(len(hists))
    for i, h in enumerate(hists):
        for a, b in itertools.permutations(range(m), 2):
            if h[a]:
                g = h.copy()
                g[a] -= 1
                g[b] += 1
                local[i] = max(local[i], abs(f[index[tuple(g)]] - f[i]))
    assert local.max() > 0.1
    distance = np.maximum(hists[None, :, :] - hists[:, None, :], 0).sum(-1)
    for i, x in enumerate(hists):
        bounds = (lsm.gnmax_local_sensitivity_bounds(x, n, 2.0, 2.0) if kind == "gnmax"
                  else lsm.threshold_local_sensitivity_bounds(x, n, 8.0, 2.0, 3.0))
        needed = np.array([local[distance[i] <= d].max() for d in range(n)])
        assert np.all(bounds >= needed * (1 - 1e-12)), (x, bounds - needed)


def test_single_order_costs_agree_with_the_ledger_curves():
    """gnmax_rdp_at_order / threshold_rdp_at_order are fedkd.accounting's data-dependent curves at one order."""
    for log_q in (-0.5, -3.0, -12.0, -60.0, -400.0):
        for sigma in (2.0, 40.0):
            curve = gnmax_rdp_data_dependent(log_q, sigma)
            got = [lsm.gnmax_rdp_at_order(log_q, sigma, order) for order in ORDERS]
            np.testing.assert_allclose(got, curve, rtol=1e-12)
    for log_pr in (-1e-9, -0.01, -0.7, -5.0, -40.0):
        curve = threshold_rdp_data_dependent(log_pr, 30.0)
        got = [lsm.threshold_rdp_at_order(log_pr, 30.0, order) for order in ORDERS]
        np.testing.assert_allclose(got, curve, rtol=1e-12)


def test_data_independent_steps_carry_no_sensitivity():
    """σ = 200 with 250 teachers: Theorem 6 never beats λ/σ², so the cost is the constant count·λ/σ² and SS = 0."""
    assert lsm.gnmax_data_independent_always(TEACHERS, 10, 200.0, ORDER)
    rel = ssm.release_epsilon(VOTES[:50], 200.0, ORDER, BETA, SIGMA_SS, DELTA)
    assert rel.rdp == pytest.approx(50 * ORDER / 200.0**2, rel=1e-12)
    assert rel.smooth_sensitivity == 0.0 and rel.noise_std == 0.0
    beta, sigma_ss = ssm.tune_release(rel.rdp, np.zeros(TEACHERS), ORDER)
    assert (beta, sigma_ss) == (0.0, math.inf)
    rel = ssm.release_epsilon(VOTES[:50], 200.0, ORDER, beta, sigma_ss, DELTA)
    assert rel.release_rdp == 0.0 and rel.noise_std == 0.0
    assert rel.epsilon == pytest.approx(rel.rdp + math.log(1 / DELTA) / (ORDER - 1), rel=1e-12)


def test_realised_release_sums_answers_only_and_sanitised_epsilon_adds_the_noise():
    answered = VOTES[:40].max(1) + 150.0 * NOISE[:40] >= 200.0
    full, _ = lsm.data_dependent_cost(VOTES[:40], SIGMA, ORDER, answered=np.ones(40, dtype=bool), threshold=200.0,
                                      threshold_sigma=150.0)
    part, _ = lsm.data_dependent_cost(VOTES[:40], SIGMA, ORDER, answered=answered, threshold=200.0,
                                      threshold_sigma=150.0)
    checks = 40 * ORDER / (2 * 150.0**2)  # data-independent at λ = 14 for this threshold
    per_answer = [lsm.gnmax_rdp_at_order(gnmax_log_q(v, SIGMA), SIGMA, ORDER) for v in VOTES[:40]]
    assert part == pytest.approx(checks + sum(np.array(per_answer)[answered]), rel=1e-12)
    assert full == pytest.approx(checks + sum(per_answer), rel=1e-12)
    rel = ssm.release_epsilon(VOTES[:40], SIGMA, ORDER, BETA, SIGMA_SS, DELTA, answered=answered, threshold=200.0,
                              threshold_sigma=150.0)
    z = np.random.default_rng(3).standard_normal()
    assert rel.sanitized_epsilon(np.random.default_rng(3)) == pytest.approx(rel.epsilon + rel.noise_std * z)


@pytest.mark.parametrize("charge", ["realised", "expected"])
def test_the_mechanism_charges_its_answers_realised_or_expected_as_the_authors_table(charge):
    """privacy=gnmax's release on the seeded votes (250 one-hot teachers per query), the paper's MNIST parameters:
    with ``threshold_charge=expected`` its data-dependent RDP at λ = 14 and its smooth-sensitivity sums are the
    authors' Table 2 cost above (every query, each answer by Pr[answered]); realised, those of the answers it gave.
    The ledger's curve (fedkd.accounting) and the release's sums (fedkd.local_sensitivity) agree at λ."""
    import torch

    from fedkd.privacy import GNMaxVoting, PrivacyPlan
    from fedkd.privacy_params import GNMaxConfig
    from fedkd.soft_labels import AggregationInputs

    cfg = GNMaxConfig(name="gnmax", epsilon=None, noise_multiplier=SIGMA, threshold=200.0, threshold_sigma=150.0,
                      smooth_sensitivity_order=ORDER, smooth_sensitivity_beta=BETA, smooth_sensitivity_sigma=SIGMA_SS,
                      threshold_charge=charge)
    top = np.stack([np.repeat(np.arange(10), row.astype(int)) for row in VOTES], axis=1)  # [teacher, query]
    inputs = AggregationInputs(teacher_logits=torch.nn.functional.one_hot(torch.from_numpy(top), 10).float(),
                               temperature=1.0, class_counts=torch.zeros(TEACHERS, 10))
    plan = PrivacyPlan(noise_multiplier=SIGMA, releases_per_query=1, planned_queries=300, planned_epsilon=None,
                       cap=None)
    release = GNMaxVoting(cfg).release(plan, inputs, None, None, None, torch.Generator(),
                                       np.random.default_rng(0))
    rdp, bounds = release.smooth
    at_order = release.rdp_data_dependent[int(np.searchsorted(ORDERS, ORDER))]
    assert at_order == pytest.approx(rdp, rel=1e-9)
    if charge == "expected":
        weights = np.exp(threshold_log_pr_answered(VOTES, 200.0, 150.0))
    else:
        weights = release.answered
        assert 0 < weights.sum() < 300
    expected_rdp, expected_bounds = lsm.data_dependent_cost(VOTES, SIGMA, ORDER, answered=weights, threshold=200.0,
                                                            threshold_sigma=150.0)
    assert rdp == pytest.approx(expected_rdp, rel=RTOL)
    np.testing.assert_allclose(bounds, expected_bounds, rtol=RTOL, atol=0)
    if charge == "expected":
        assert rdp == pytest.approx(0.6160873385663151, rel=RTOL)  # the authors' expected cost, above
