"""The data-dependent RDP of PATE's Confident GNMax at one fixed order and bounds on its local sensitivity
(Papernot et al. 2018, "Scalable Private Learning with PATE", arXiv 1802.08908, Section 4.2 and its appendix): what
``fedkd.smooth_sensitivity`` releases. The data-dependent RDP (Theorem 6 on the noisy argmax and on the threshold
check) depends on the votes; A⁽ᵈ⁾ bounds how far it moves on every vote histogram within d changed teacher votes.
This module computes

- Theorem 6 at one order λ, with its validity conditions;
- A⁽ᵈ⁾ for one GNMax answer (Algorithm 3 with Proposition 13; the walk over histograms of the authors' more
  efficient form of Algorithms 4–5) and for one threshold check (exact: the check depends only on the top count);
- conditions C5–C6 (Appendix B.4.2), under which Algorithm 3 bounds the local sensitivity;
- the cost of a whole release at λ and the sum of its queries' A⁽ᵈ⁾ (the local sensitivity of a sum is at most the
  sum of the local sensitivities).

Written by hand: no maintained library ships these bounds. The authors' analysis code (tensorflow/privacy,
research/pate_2018 smooth_sensitivity.py and core.py) was read, and tests/test_smooth_sensitivity.py checks the
numbers agree with it. Deliberate differences:

- A⁽ᵈ⁾ is a running maximum over distances ≤ d (its definition; local sensitivity may peak closer than d). The
  authors' threshold bounds take the two histograms whose top count moved by exactly ±d and so can drop with d;
  a sum over queries of such arrays can miss a query's peak. Their GNMax bounds are non-decreasing where C5–C6
  hold, but for one rounding case below.
- When q₀ is the natural upper bound (small σ), β jumps at q₀ and bu(q₁) = q₀ exactly; the authors' plateau is
  the jump's upper or lower side as bu(q₁) happens to round. Here bu within rounding of q₀ counts as q₀: the upper
  side, as in their own test ([10, 0, 0] at σ = 0.5).
- An answer's cost is Algorithm 3's β(q), the function whose sensitivity is bounded (see ``data_dependent_cost``);
  queries can be weighted by whether they were answered (the realised release) or by Pr[answered] (the authors'
  expected cost).
- Conditions C5–C6 are checked numerically on a dense grid of ln q instead of by symbolic differentiation and a
  bounded scalar minimisation (no sympy); the grid searches down to tiny q, where a local minimiser looks least.
  Where the authors' code fails (log of an underflowed q), these bounds work in log space.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.special

from fedkd.accounting import (
    LOG2,
    SQRT2,
    gnmax_log_q_of_gaps,
    log1mexp,
    log_normal_sf,
    threshold_log_pr_answered,
)

# ------------------------------------------------------------------------------------ Theorem 6 at a fixed order


def _theorem6(log_q: np.ndarray, sigma: float, order: float) -> np.ndarray:
    """Theorem 6's data-dependent bound at ``order`` with μ₂ = σ·sqrt(ln 1/q), μ₁ = μ₂ + 1 (Proposition 10),
    without its validity conditions: callers restrict ln q to where they hold. 0 where q = 0 (a fixed output)."""
    log_q = np.asarray(log_q, dtype=np.float64)
    out = np.zeros_like(log_q)
    finite = np.isfinite(log_q)
    lq = np.where(finite, log_q, -1.0)
    variance = sigma**2
    mu2 = sigma * np.sqrt(-lq)
    mu1 = mu2 + 1.0
    eps1, eps2 = mu1 / variance, mu2 / variance
    with np.errstate(divide="ignore", invalid="ignore"):
        log_1mq = log1mexp(lq)
        log_a = (order - 1) * (log_1mq - log1mexp(np.minimum((lq + eps2) * (1 - 1 / mu2), 0.0)))
        log_b = (order - 1) * (eps1 - lq / (mu1 - 1))
        bound = np.logaddexp(log_1mq + log_a, lq + log_b) / (order - 1)
    out[finite] = bound[finite]
    return out


def _theorem6_applies(log_q: np.ndarray, sigma: float, order: float) -> np.ndarray:
    """Where Theorem 6 holds at ``order``: μ₁ > λ, μ₂ > 1, q in the range where the bound increases with q
    (Lemma 9) and ln(1/q) > μ₂/σ² (A > 0)."""
    log_q = np.asarray(log_q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu2 = sigma * np.sqrt(-log_q)
        mu1 = mu2 + 1.0
        eps2 = mu2 / sigma**2
        increasing = log_q <= (mu2 - 1) * eps2 - mu2 * (np.log1p(1 / (mu1 - 1)) + np.log1p(1 / (mu2 - 1)))
        return (mu1 > order) & (mu2 > 1) & increasing & (-log_q > eps2)


def gnmax_rdp_at_order(log_q: float | np.ndarray, sigma: float, order: float) -> float | np.ndarray:
    """Data-dependent RDP of one GNMax answer at one order (Theorem 6, its conditions checked; otherwise the
    data-independent λ/σ² of Proposition 8): ``fedkd.accounting.gnmax_rdp_data_dependent`` at a single order, for
    the smooth-sensitivity release, which works at one fixed λ."""
    _check_order(order)
    log_q_arr = np.asarray(log_q, dtype=np.float64)
    independent = order / sigma**2
    out = np.full_like(log_q_arr, independent)
    applies = _theorem6_applies(log_q_arr, sigma, order)
    out[applies] = np.minimum(_theorem6(log_q_arr[applies], sigma, order), independent)
    out[np.isneginf(log_q_arr)] = 0.0
    return float(out) if out.ndim == 0 else out


def threshold_rdp_at_order(log_pr_answered: float | np.ndarray, threshold_sigma: float,
                           order: float) -> float | np.ndarray:
    """Data-dependent RDP of one threshold check at one order: Theorem 6 at σ = √2·σ₁ with q the less likely
    outcome's probability (as ``fedkd.accounting.threshold_rdp_data_dependent``)."""
    lp = np.asarray(log_pr_answered, dtype=np.float64)
    log_q = np.minimum(lp, log1mexp(lp))
    return gnmax_rdp_at_order(log_q if log_q.ndim else float(log_q), SQRT2 * threshold_sigma, order)


def _check_order(order: float) -> None:
    if not order > 1:
        raise ValueError(f"the Rényi order must be > 1, got λ = {order}")


# --------------------------------------------------------------------------- GNMax: Algorithm 3, Proposition 13


def _sorted_log_q(votes: np.ndarray, sigma: float) -> float:
    """Proposition 7's ln q for votes sorted in decreasing order: the walks below keep the top class first."""
    return gnmax_log_q_of_gaps(votes[0] - votes[1:], sigma)


def gnmax_log_q0(sigma: float, order: float) -> float:
    """ln q₀ of Algorithm 3: below it Theorem 6's bound (with its conditions met) is under the data-independent
    λ/σ², above it the data-independent bound is used. The root of bound − λ/σ², bracketed below the natural
    upper bound min(−(1 + 1/σ)², −((λ − 0.99)/σ)², −1/σ²)."""
    _check_order(order)

    def gap(log_q: float) -> float:
        return float(_theorem6(np.array(log_q), sigma, order)) - order / sigma**2

    upper = min(-((1 + 1 / sigma) ** 2), -(((order - 0.99) / sigma) ** 2), -1 / sigma**2)
    if not _valid_for_q0(upper, sigma, order):
        raise ValueError(f"Theorem 6 does not apply at ln q = {upper:.4g} for σ = {sigma}, λ = {order}")
    if gap(upper) < 0:
        return upper
    lower = 2 * upper
    while gap(lower) > 0:
        if lower < -10_000:
            raise ValueError(f"no ln q₀ above −10⁴ for σ = {sigma}, λ = {order}")
        lower *= 1.5
    log_q0 = float(scipy.optimize.brentq(gap, lower, upper))
    if not _valid_for_q0(log_q0, sigma, order):
        raise ValueError(f"Theorem 6 does not apply at ln q₀ = {log_q0:.4g} for σ = {sigma}, λ = {order}")
    return log_q0


def _valid_for_q0(log_q: float, sigma: float, order: float) -> bool:
    """μ₁ ≥ λ and Lemma 9's range (the check the authors apply to q₀)."""
    mu2 = sigma * math.sqrt(-log_q)
    mu1 = mu2 + 1
    return mu1 >= order and log_q <= (mu2 - 1) * mu2 / sigma**2 - mu2 * math.log(mu1 / (mu1 - 1) * mu2 / (mu2 - 1))


def _log_bl(log_q: np.ndarray, sigma: float, num_classes: int) -> np.ndarray:
    """ln of Proposition 13's lower bound on q after one teacher changes its vote:
    (m − 1)/2 · erfc(erfc⁻¹(2q/(m − 1)) + 1/σ), with ln erfc(x) = ln 2 + ln Φ(−√2·x)."""
    z = scipy.special.erfcinv(2 * np.exp(log_q) / (num_classes - 1))
    return math.log((num_classes - 1) / 2) + LOG2 + scipy.special.log_ndtr(-SQRT2 * (z + 1 / sigma))


def _log_bu(log_q: np.ndarray, sigma: float, num_classes: int) -> np.ndarray:
    """ln of Proposition 13's upper bound: min(1, (m − 1)/2 · erfc(erfc⁻¹(2q/(m − 1)) − 1/σ))."""
    z = scipy.special.erfcinv(2 * np.exp(log_q) / (num_classes - 1))
    return np.minimum(0.0, math.log((num_classes - 1) / 2) + LOG2 + scipy.special.log_ndtr(-SQRT2 * (z - 1 / sigma)))


@dataclass(frozen=True)
class _GNMaxCurve:
    """β(q) of Algorithm 3 at one (σ, λ, m): Theorem 6 below q₀, the data-independent bound above."""

    sigma: float
    order: float
    num_classes: int
    log_q0: float
    log_q1: float  # ln bl(q₀): on [q₁, q₀] Algorithm 3 uses the local sensitivity at q₁

    @staticmethod
    def at(sigma: float, order: float, num_classes: int) -> _GNMaxCurve:
        return _gnmax_curve(float(sigma), float(order), int(num_classes))

    def beta(self, log_q: np.ndarray) -> np.ndarray:
        log_q = np.asarray(log_q, dtype=np.float64)
        return np.where(log_q >= self.log_q0, self.order / self.sigma**2,
                        _theorem6(np.minimum(log_q, self.log_q0), self.sigma, self.order))

    def local_sensitivity(self, log_q: np.ndarray) -> np.ndarray:
        """Algorithm 3: max(β(bu(q)) − β(q), β(q) − β(bl(q))), with q on [q₁, q₀] moved to q₁ (Proposition 13).
        bu(q) within rounding of q₀ counts as q₀ (bu(q₁) = q₀ exactly, and β may jump there when q₀ is the
        natural upper bound): the larger β, so the bound stays an upper bound."""
        log_q = np.asarray(log_q, dtype=np.float64)
        log_q = np.where((log_q >= self.log_q1) & (log_q <= self.log_q0), self.log_q1, log_q)
        b = self.beta(log_q)
        log_bu = _log_bu(log_q, self.sigma, self.num_classes)
        log_bu = np.where(log_bu >= self.log_q0 - 1e-10 * abs(self.log_q0), np.maximum(log_bu, self.log_q0), log_bu)
        up = self.beta(log_bu) - b
        down = b - self.beta(_log_bl(log_q, self.sigma, self.num_classes))
        return np.maximum(up, down)


@functools.lru_cache(maxsize=64)
def _gnmax_curve(sigma: float, order: float, num_classes: int) -> _GNMaxCurve:
    """Cached: q₀ is a root search, and every query of a release shares (σ, λ, m)."""
    log_q0 = gnmax_log_q0(sigma, order)
    log_q1 = float(_log_bl(np.array(log_q0), sigma, num_classes))
    return _GNMaxCurve(sigma, order, num_classes, log_q0, log_q1)


def gnmax_local_sensitivity_bounds(votes: np.ndarray, num_teachers: int, sigma: float,
                                   order: float) -> np.ndarray:
    """A⁽ᵈ⁾, d = 0 … num_teachers − 1: bounds on the local sensitivity of one GNMax answer's data-dependent RDP at
    ``order`` over the histograms within d changed votes (Algorithm 3 along the authors' O(teachers·classes) walk
    of Algorithms 4–5). Under C5–C6 the sensitivity grows as q nears [q₁, q₀] from either side, so the worst
    histogram d votes away moves d votes toward it: from the top class to the runner-up (q grows) when q < q₁,
    from the runners-up to the top class (q shrinks) when q > q₀. Beyond the walk, the plateau at q₁."""
    if num_teachers < 1 or len(votes) < 2:
        raise ValueError(f"need ≥ 1 teacher and ≥ 2 classes, got {num_teachers} and {len(votes)}")
    curve = _GNMaxCurve.at(sigma, order, len(votes))
    plateau = float(curve.local_sensitivity(np.array(curve.log_q1)))
    out = np.full(num_teachers, plateau)
    v = np.sort(np.asarray(votes, dtype=np.float64))[::-1].copy()
    log_q = _sorted_log_q(v, sigma)
    if curve.log_q1 <= log_q <= curve.log_q0:
        return out
    walk = [log_q]
    if log_q > curve.log_q0:  # toward consensus: a runner-up's vote goes to the top class
        while log_q > curve.log_q0 and v[1] > 0 and len(walk) < num_teachers:
            v[0] += 1
            v[1 + np.flatnonzero(v[1:] == v[1])[-1]] -= 1  # the last of the tied runners-up keeps v sorted
            log_q = _sorted_log_q(v, sigma)
            walk.append(log_q)
    else:  # toward a tie: the top class gives a vote to the runner-up
        while log_q < curve.log_q1 and len(walk) < num_teachers:
            v[0] -= 1
            v[1] += 1
            v = np.sort(v)[::-1].copy()
            log_q = _sorted_log_q(v, sigma)
            walk.append(log_q)
    out[: len(walk)] = curve.local_sensitivity(np.array(walk))
    return np.maximum.accumulate(out)


# ----------------------------------------------------------------------------------------- the threshold check


def _threshold_rdp_by_top_count(num_teachers: int, threshold: float, threshold_sigma: float,
                                order: float) -> np.ndarray:
    """The threshold check's data-dependent RDP at ``order`` for every top count 0 … num_teachers."""
    top = np.arange(num_teachers + 1, dtype=np.float64)
    log_pr = log_normal_sf(threshold - top, threshold_sigma)
    return np.asarray(threshold_rdp_at_order(log_pr, threshold_sigma, order))


def threshold_local_sensitivity_bounds(votes: np.ndarray, num_teachers: int, threshold: float,
                                       threshold_sigma: float, order: float) -> np.ndarray:
    """A⁽ᵈ⁾, d = 0 … num_teachers − 1, for one threshold check: its RDP depends only on the top count (rounded to a
    whole vote, as ``threshold_log_pr_answered``), which d changed votes move by at most d, so A⁽ᵈ⁾ is the largest
    one-vote change of that RDP between top counts within d of the current one; exact, no C5–C6 needed."""
    if num_teachers < 1:
        raise ValueError(f"need ≥ 1 teacher, got {num_teachers}")
    by_top = _threshold_ls_by_top_count(num_teachers, threshold, threshold_sigma, order)
    return _threshold_bounds(by_top, float(np.max(votes)))


def _threshold_ls_by_top_count(num_teachers: int, threshold: float, threshold_sigma: float,
                               order: float) -> np.ndarray:
    """The check's local sensitivity at each top count 0 … num_teachers: its largest one-vote change."""
    rdp = _threshold_rdp_by_top_count(num_teachers, threshold, threshold_sigma, order)
    step = np.abs(np.diff(rdp))  # step[v]: top count v → v + 1
    return np.maximum(np.concatenate([[0.0], step]), np.concatenate([step, [0.0]]))


def _threshold_bounds(ls_by_top: np.ndarray, top: float) -> np.ndarray:
    """A⁽ᵈ⁾ = max of ``ls_by_top`` over top counts within d of ``top`` (rounded), d = 0 … num_teachers − 1."""
    num_teachers = len(ls_by_top) - 1
    current = int(np.clip(np.rint(top), 0, num_teachers))
    d = np.arange(num_teachers)
    up = np.where(current + d <= num_teachers, ls_by_top[np.minimum(current + d, num_teachers)], 0.0)
    down = np.where(current - d >= 0, ls_by_top[np.maximum(current - d, 0)], 0.0)
    return np.maximum.accumulate(np.maximum(up, down))


# ---------------------------------------------------------------------------------------- conditions C5 and C6


def check_gnmax_conditions(sigma: float, num_classes: int, order: float, points: int = 4000) -> tuple[bool, bool]:
    """Conditions C5–C6 (Appendix B.4.2), under which Algorithm 3 bounds GNMax's local sensitivity: C5, Theorem 6's
    β(q) non-decreasing on (0, q₀); C6, β(bu(q)) − β(q) non-decreasing on (0, bl(q₀)). Checked on ``points``
    values of ln q from ln q₀ − 700 (q ≈ 10⁻³⁰⁴·q₀) up; a decrease beyond rounding (10⁻¹⁰ of the largest value)
    fails."""
    curve = _GNMaxCurve.at(sigma, order, num_classes)

    def non_decreasing(values: np.ndarray) -> bool:
        tol = 1e-10 * max(float(np.max(np.abs(values))), 1e-300)
        return bool(np.all(np.diff(values) >= -tol))

    grid = np.linspace(curve.log_q0 - 700.0, curve.log_q0, points)
    c5 = non_decreasing(_theorem6(grid, sigma, order))
    grid = np.linspace(curve.log_q1 - 700.0, curve.log_q1, points)
    delta = _theorem6(np.minimum(_log_bu(grid, sigma, num_classes), curve.log_q0), sigma, order) - _theorem6(
        grid, sigma, order)
    return c5, non_decreasing(delta)




def gnmax_data_independent_always(num_teachers: int, num_classes: int, sigma: float, order: float) -> bool:
    """Whether Theorem 6 never beats λ/σ² (not even for a unanimous vote): then the answers' cost is the constant
    λ/σ², of local sensitivity 0 (np.isclose, as the authors)."""
    unanimous = np.zeros(num_classes)
    unanimous[0] = num_teachers
    dependent = gnmax_rdp_at_order(_sorted_log_q(unanimous, sigma), sigma, order)
    return bool(np.isclose(dependent, order / sigma**2))


def threshold_data_independent_always(num_teachers: int, threshold: float, threshold_sigma: float,
                                      order: float) -> bool:
    """Whether the threshold check's data-dependent RDP is the data-independent λ/(2σ₁²) at both extreme top counts
    (0 and num_teachers), where its q is smallest: then the checks' cost is constant, of local sensitivity 0."""
    rdp = _threshold_rdp_by_top_count(num_teachers, threshold, threshold_sigma, order)
    independent = order / (2 * threshold_sigma**2)
    return bool(np.isclose(rdp[0], independent) and np.isclose(rdp[-1], independent))


def data_dependent_cost(votes: np.ndarray, sigma: float, order: float, *, answered: np.ndarray | None = None,
                        threshold: float | None = None, threshold_sigma: float | None = None,
                        num_teachers: int | None = None, check_conditions: bool = True) -> tuple[float, np.ndarray]:
    """The data-dependent RDP at ``order`` of Confident GNMax on ``votes`` (one row per query the threshold saw; per
    answered query without a threshold) and the bounds A⁽ᵈ⁾ on its local sensitivity, both summed over queries:
    every threshold check, and each answer weighted by ``answered`` (bool; or Pr[answered] for the authors'
    expected cost, their Table 2). A step whose data-dependent bound never beats the data-independent one counts
    that constant, of sensitivity 0. An answer costs Algorithm 3's β(q) (Theorem 6 below q₀, λ/σ² above), the
    function whose sensitivity is bounded: ``gnmax_rdp_at_order`` but for a sliver just above q₀ when q₀ is the
    natural upper bound, where the two differ by < 10⁻⁵ relative for σ ≥ 2 (the authors sum the latter).
    Raises ValueError when C5–C6 fail for the answers' (σ, classes, λ)."""
    votes = np.asarray(votes, dtype=np.float64)
    if votes.ndim != 2 or votes.shape[1] < 2:
        raise ValueError(f"votes must be [queries, classes ≥ 2], got shape {votes.shape}")
    _check_order(order)
    if (threshold is None) != (threshold_sigma is None):
        raise ValueError("threshold and threshold_sigma go together")
    n_queries, num_classes = votes.shape
    if num_teachers is None:
        totals = np.rint(votes.sum(1))
        if n_queries and totals.min() != totals.max():
            raise ValueError("rows of votes sum to different teacher counts: pass num_teachers")
        num_teachers = int(totals.max()) if n_queries else 0
    if answered is None:
        if threshold is not None:
            raise ValueError("with a threshold, say which queries were answered")
        answered = np.ones(n_queries)
    weights = np.asarray(answered, dtype=np.float64)
    if weights.shape != (n_queries,):
        raise ValueError(f"answered must have one entry per query ({n_queries}), got shape {weights.shape}")

    rdp = 0.0
    ls = np.zeros(num_teachers)
    if threshold is not None:
        if threshold_data_independent_always(num_teachers, threshold, threshold_sigma, order):
            rdp += n_queries * order / (2 * threshold_sigma**2)
        else:
            rdp += float(np.sum(threshold_rdp_at_order(threshold_log_pr_answered(votes, threshold, threshold_sigma),
                                                       threshold_sigma, order)))
            by_top = _threshold_ls_by_top_count(num_teachers, threshold, threshold_sigma, order)
            for v in votes:
                ls += _threshold_bounds(by_top, float(v.max()))
    asked = np.flatnonzero(weights > 0)
    if gnmax_data_independent_always(num_teachers, num_classes, sigma, order):
        rdp += float(weights[asked].sum()) * order / sigma**2
    else:
        if check_conditions:
            c5, c6 = check_gnmax_conditions(sigma, num_classes, order)
            if not c5:
                raise ValueError(f"condition C5 fails for σ = {sigma}, {num_classes} classes, λ = {order}: "
                                 "Theorem 6's bound is not non-decreasing in q below q₀")
            if not c6:
                raise ValueError(f"condition C6 fails for σ = {sigma}, {num_classes} classes, λ = {order}: "
                                 "β(bu(q)) − β(q) is not non-decreasing in q below bl(q₀)")
        curve = _GNMaxCurve.at(sigma, order, num_classes)
        for i in asked:
            log_q = _sorted_log_q(np.sort(votes[i])[::-1], sigma)
            rdp += weights[i] * float(curve.beta(np.array(log_q)))
            ls += weights[i] * gnmax_local_sensitivity_bounds(votes[i], num_teachers, sigma, order)
    return float(rdp), ls
