"""Releasing PATE's data-dependent privacy cost through smooth sensitivity (Papernot et al. 2018, "Scalable Private
Learning with PATE", arXiv 1802.08908, Section 4.2 and its appendix).

The data-dependent RDP of Confident GNMax depends on the votes, so the ε it gives is not itself private. The paper
releases it with the Gaussian smooth-sensitivity mechanism (GNSS): at one fixed order λ, the summed data-dependent
RDP f(x) (``fedkd.local_sensitivity``) is published as f(x) + SS_β(x)·N(0, σ_ss²), where
SS_β(x) = max_d e^{−βd} A⁽ᵈ⁾(x). This module computes SS_β, GNSS's own RDP (Theorem 23, valid for
1 < λ < 1/(2β)), and the release: data-dependent RDP at λ, SS_β, GNSS's cost, and ε by the classic conversion at
the fixed order, ε = RDP(λ) + ln(1/δ)/(λ − 1), as the paper's Table 2 (not the tighter conversion of
``fedkd.accounting.epsilon_from_rdp``). Written by hand after the authors' analysis code (tensorflow/privacy,
research/pate_2018 smooth_sensitivity.py and ICLR2018/smooth_sensitivity_table.py), which
tests/test_smooth_sensitivity.py checks it against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedkd.local_sensitivity import data_dependent_cost

# ------------------------------------------------------------------------------ smooth sensitivity and GNSS cost


def smooth_sensitivity(local_sensitivity_bounds: np.ndarray, beta: float) -> float:
    """SS_β = max_d e^{−βd} A⁽ᵈ⁾ (Nissim, Raskhodnikova and Smith 2007, as the paper uses it), of one query's
    bounds or of their sum over queries."""
    if beta < 0:
        raise ValueError(f"the smoothness β must be ≥ 0, got {beta}")
    a = np.asarray(local_sensitivity_bounds, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(a * np.exp(-beta * np.arange(a.size))))


def smooth_sensitivity_gaussian_rdp(beta: float, sigma_ss: float, order: float) -> float:
    """RDP at ``order`` of GNSS, f(x) + SS_β(x)·N(0, σ_ss²) (Theorem 23): λ·e^{2β}/σ_ss² + (βλ − ½·ln(1 − 2λβ))/(λ − 1),
    valid for β ≥ 0 and 1 < λ < 1/(2β)."""
    if not beta >= 0:
        raise ValueError(f"Theorem 23 needs β ≥ 0, got β = {beta}")
    if not sigma_ss > 0:
        raise ValueError(f"Theorem 23 needs σ_ss > 0, got σ_ss = {sigma_ss}")
    if not order > 1:
        raise ValueError(f"Theorem 23 needs λ > 1, got λ = {order}")
    if beta > 0 and not order < 1 / (2 * beta):
        raise ValueError(f"Theorem 23 needs λ < 1/(2β): λ = {order}, 1/(2β) = {1 / (2 * beta):.6g}")
    return order * math.exp(2 * beta) / sigma_ss**2 + (beta * order - 0.5 * math.log1p(-2 * order * beta)) / (order - 1)


# ---------------------------------------------------------------------------------------------------- release


@dataclass(frozen=True)
class SmoothSensitivityRelease:
    """The GNSS release of the data-dependent cost at one order. ``epsilon`` is the expected released ε (classic
    conversion at ``order``); what is published is ``epsilon`` + N(0, ``noise_std``²) (``sanitized_epsilon``)."""

    order: float
    delta: float
    beta: float
    sigma_ss: float
    rdp: float  # data-dependent RDP at ``order``, summed over threshold checks and answers
    smooth_sensitivity: float  # SS_β of ``rdp``
    release_rdp: float  # GNSS's own RDP at ``order`` (Theorem 23)
    epsilon: float  # rdp + release_rdp + ln(1/δ)/(λ − 1)
    noise_std: float  # SS_β · σ_ss, the std of the noise added to ``rdp``

    def sanitized_epsilon(self, rng: np.random.Generator) -> float:
        """The ε to publish: the data-dependent RDP plus GNSS noise, plus GNSS's cost and the δ term."""
        return self.epsilon + self.noise_std * float(rng.standard_normal())


def release_epsilon(votes: np.ndarray, sigma: float, order: float, beta: float, sigma_ss: float, delta: float, *,
                    answered: np.ndarray | None = None, threshold: float | None = None,
                    threshold_sigma: float | None = None, num_teachers: int | None = None,
                    check_conditions: bool = True) -> SmoothSensitivityRelease:
    """The GNSS release of Confident GNMax's data-dependent cost (the paper's Section 4.2, Table 2): the arguments
    of ``data_dependent_cost``, GNSS's (β, σ_ss) and δ. Theorem 23's conditions are checked first."""
    smooth_sensitivity_gaussian_rdp(beta, sigma_ss, order)  # Theorem 23's conditions, before the votes are read
    if not 0 < delta < 1:
        raise ValueError(f"δ must be in (0, 1), got {delta}")
    rdp, ls = data_dependent_cost(votes, sigma, order, answered=answered, threshold=threshold,
                                  threshold_sigma=threshold_sigma, num_teachers=num_teachers,
                                  check_conditions=check_conditions)
    return release_of(rdp, ls, order, beta, sigma_ss, delta)


def release_of(rdp: float, local_sensitivity_bounds: np.ndarray, order: float, beta: float, sigma_ss: float,
               delta: float) -> SmoothSensitivityRelease:
    """The GNSS release of a data-dependent RDP at ``order`` already summed, with its summed bounds A(d) (a run
    sums them release by release)."""
    release_rdp = smooth_sensitivity_gaussian_rdp(beta, sigma_ss, order)
    ss = smooth_sensitivity(local_sensitivity_bounds, beta)
    return SmoothSensitivityRelease(order=order, delta=delta, beta=beta, sigma_ss=sigma_ss, rdp=rdp,
                                    smooth_sensitivity=ss, release_rdp=release_rdp,
                                    epsilon=rdp + release_rdp + math.log(1 / delta) / (order - 1),
                                    noise_std=ss * sigma_ss if ss > 0 else 0.0)  # σ_ss = ∞ from tune_release


def tune_release(rdp: float, local_sensitivity_bounds: np.ndarray, order: float) -> tuple[float, float]:
    """(β, σ_ss) minimising RDP + GNSS's cost + 2·SS_β·σ_ss (the release's upper two-std value) over the authors'
    grid β ∈ [0.3/λ, 0.495/λ) in steps of 0.01/λ, with σ_ss = (λ·e^{2β}/SS_β)^{1/3}, which minimises
    λ·e^{2β}/σ² + 2·SS_β·σ. Not private: it looks at the votes, as the authors' Table 2 does; (0, ∞) when the
    cost has no sensitivity (nothing to hide)."""
    ls = np.asarray(local_sensitivity_bounds, dtype=np.float64)
    if not np.any(ls > 0):
        return 0.0, math.inf
    best = (math.inf, 0.0, math.inf)
    for beta in np.arange(0.3 / order, 0.495 / order, 0.01 / order):
        ss = smooth_sensitivity(ls, float(beta))
        sigma_ss = (order * math.exp(2 * beta) / ss) ** (1 / 3)
        cost = rdp + smooth_sensitivity_gaussian_rdp(float(beta), sigma_ss, order) + 2 * ss * sigma_ss
        if cost < best[0]:
            best = (cost, float(beta), sigma_ss)
    return best[1], best[2]
