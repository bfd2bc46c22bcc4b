"""Privacy accounting: Rényi DP composed over every mechanism invocation of a run and converted to (ε, δ) by
Opacus (``compute_rdp``, ``get_privacy_spent``, ``get_noise_multiplier``), DP-SGD's per-client ε from Opacus' RDP
accountant history, and PATE's Confident GNMax with its data-dependent bounds (Papernot et al. 2018: Theorem 6
with Proposition 7 for the noisy argmax, the same theorem on the threshold check), the RDP curves written here by
hand: no maintained library ships them (the authors' analysis, tensorflow/privacy research/pate_2018 core.py, is
research code, not a package); the data-independent cost they fall back to is Opacus' Gaussian curve. The
data-dependent ε is reported beside the run's guarantee, never instead of it; its smooth-sensitivity release (the
paper's Section 4.2), the form that may be published, is ``fedkd.smooth_sensitivity``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.special

from fedkd.config import ClientPrivacy

# Opacus' default orders (RDPAccountant.DEFAULT_ALPHAS, 1.1 … 63, written out so that importing this module, which
# every client does, does not import Opacus; tests/test_privacy.py checks they are Opacus'), extended with integer
# orders up to 512: PATE's data-dependent bounds of confident answers and small ε over few releases are tightest
# at orders in the hundreds (the authors' analysis goes to 500). Integers keep Opacus' subsampled-Gaussian curve on
# its exact integer-order path.
OPACUS_DEFAULT_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
ORDERS = np.unique(np.concatenate([np.array(OPACUS_DEFAULT_ORDERS, dtype=np.float64),
                                   np.round(np.geomspace(64, 512, 24))]))
SQRT2 = math.sqrt(2.0)
LOG2 = math.log(2.0)


class PrivacyBudgetError(ValueError):
    """The requested privacy budget cannot be met (or would be exceeded) by the configured run."""


def gaussian_rdp(noise_multiplier: float, count: int = 1) -> np.ndarray:
    """RDP of ``count`` Gaussian mechanisms with noise std = ``noise_multiplier`` × L2 sensitivity (Mironov 2017:
    α / (2σ²) each), from Opacus' analysis at ``ORDERS``."""
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=count, orders=list(ORDERS)))


def epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    """The (ε, δ) conversion of an RDP curve at ``ORDERS`` (Opacus' ``get_privacy_spent``)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if not np.any(rdp > 0):
        return 0.0
    eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=list(rdp), delta=delta)
    return float(eps)


def epsilon_from_rdp_classic(rdp: np.ndarray, delta: float) -> float:
    """min over orders of RDP(λ) + ln(1/δ)/(λ − 1) (Mironov 2017, Proposition 3): the conversion PATE's paper and
    analysis code use. Looser than ``epsilon_from_rdp``; for putting an ε beside theirs."""
    if not np.any(rdp > 0):
        return 0.0
    return float(np.min(rdp + math.log(1 / delta) / (ORDERS - 1)))


def calibrate_gaussian(target_epsilon: float, delta: float, count: int) -> float:
    """The noise multiplier σ with which ``count`` Gaussian mechanisms compose to ``target_epsilon`` at ``delta``
    (Opacus' ``get_noise_multiplier`` with sampling rate 1, tolerance 0.5 % of ε)."""
    from opacus.accountants.utils import get_noise_multiplier

    if count < 1:
        raise PrivacyBudgetError("nothing to calibrate: the run releases no soft labels")
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=1.0,
                                      steps=count, accountant="rdp", epsilon_tolerance=0.005 * target_epsilon,
                                      alphas=list(ORDERS)))


class RdpLedger:
    """RDP curves of every mechanism invocation of a run, summed per order (RDP composes additively), with the
    (ε, δ) they add up to. Holds a data-independent curve (what the guarantee rests on) and, for GNMax, PATE's
    data-dependent one beside it."""

    def __init__(self, delta: float) -> None:
        self.delta = delta
        self.rdp = np.zeros_like(ORDERS)
        self.rdp_data_dependent = np.zeros_like(ORDERS)
        self.invocations = 0

    def add(self, rdp: np.ndarray, count: int, rdp_data_dependent: np.ndarray | None = None) -> None:
        self.rdp = self.rdp + rdp
        self.rdp_data_dependent = self.rdp_data_dependent + (rdp if rdp_data_dependent is None
                                                             else rdp_data_dependent)
        self.invocations += count

    def epsilon(self) -> float:
        return epsilon_from_rdp(self.rdp, self.delta)

    def epsilon_data_dependent(self) -> float:
        return epsilon_from_rdp(self.rdp_data_dependent, self.delta)

    def epsilon_classic(self) -> tuple[float, float]:
        """(data-independent, data-dependent) ε with the classic conversion PATE's paper uses."""
        return (epsilon_from_rdp_classic(self.rdp, self.delta),
                epsilon_from_rdp_classic(self.rdp_data_dependent, self.delta))

    def epsilon_if(self, rdp: np.ndarray) -> float:
        """ε after also spending ``rdp``: to stop before a target is exceeded."""
        return epsilon_from_rdp(self.rdp + rdp, self.delta)

    def state_dict(self) -> dict:
        return {"rdp": self.rdp.copy(), "rdp_data_dependent": self.rdp_data_dependent.copy(),
                "invocations": self.invocations}

    def load_state_dict(self, state: dict) -> None:
        self.rdp, self.rdp_data_dependent = state["rdp"].copy(), state["rdp_data_dependent"].copy()
        self.invocations = state["invocations"]


def dpsgd_sample_rate(shard_size: int, batch_size: int) -> float:
    """Poisson sampling rate of Opacus' DPDataLoader for a loader of ``batch_size`` over ``shard_size``."""
    return 1.0 / math.ceil(shard_size / batch_size)


def dpsgd_noise_multiplier(privacy: ClientPrivacy, shard_size: int, epochs_per_round: int, batch_size: int) -> float:
    """The client's DP-SGD σ: as given, or calibrated by Opacus for its target ε over all rounds of training."""
    from opacus.accountants.utils import get_noise_multiplier

    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    return float(get_noise_multiplier(target_epsilon=privacy.epsilon, target_delta=privacy.delta,
                                      sample_rate=dpsgd_sample_rate(shard_size, batch_size),
                                      epochs=epochs_per_round * privacy.num_rounds, accountant="rdp",
                                      epsilon_tolerance=0.005 * privacy.epsilon, alphas=list(ORDERS)))


def dpsgd_epsilon(sigma: float, shard_size: int, batch_size: int, epochs: int, delta: float,
                  count_noise: float = 0.0) -> float:
    """ε of ``epochs`` of DP-SGD (Opacus' RDP accountant), plus one release of noisy class counts when
    ``count_noise`` > 0."""
    q = dpsgd_sample_rate(shard_size, batch_size)
    return dpsgd_history_epsilon([(sigma, q, epochs * int(1 / q))], delta, count_noise)


def dpsgd_history_epsilon(history: list[tuple[float, float, int]], delta: float, count_noise: float = 0.0) -> float:
    """ε of an Opacus RDP-accountant history of (noise multiplier, sample rate, steps), plus one release of noisy
    class counts when ``count_noise`` > 0 (which Opacus' accountant cannot hold)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = sum((np.asarray(compute_rdp(q=q, noise_multiplier=s, steps=int(n), orders=list(ORDERS)))
               for s, q, n in history), np.zeros_like(ORDERS))
    if count_noise > 0:
        rdp = rdp + gaussian_rdp(count_noise)
    return epsilon_from_rdp(rdp, delta)


# ----------------------------------------------------------------------------------------------------- GNMax


def log_normal_sf(x: np.ndarray, scale: float) -> np.ndarray:
    """ln Pr[N(0, scale²) ≥ x]: scipy.stats.norm.logsf to the bit, without importing scipy.stats (half a second of
    every client process's start)."""
    return scipy.special.log_ndtr(-(np.asarray(x, dtype=np.float64) / scale))


def gnmax_log_q(votes: np.ndarray, sigma: float) -> float:
    """Upper bound on ln Pr[GNMax answer ≠ plurality class] (Papernot et al. 2018, Proposition 7):
    q ≤ Σ_{j≠j*} Pr[N(0, 2σ²) ≥ n_{j*} − n_j], capped at 1 − 1/C."""
    top = int(np.argmax(votes))
    return gnmax_log_q_of_gaps((votes[top] - np.delete(votes, top)).astype(np.float64), sigma)


def gnmax_log_q_of_gaps(gaps: np.ndarray, sigma: float) -> float:
    """Proposition 7's ln q from the gaps n_{j*} − n_j between the plurality count and every other class's (the
    C − 1 of them): callers that keep the votes sorted pass ``votes[0] − votes[1:]``."""
    log_q = float(scipy.special.logsumexp(log_normal_sf(gaps, SQRT2 * sigma)))
    return min(log_q, math.log(1.0 - 1.0 / (len(gaps) + 1)))


def log1mexp(x: float | np.ndarray) -> float | np.ndarray:
    """log(1 − e^x) for x ≤ 0, stable at both ends (−∞ at 0); a float for a float, an array for an array."""
    arr = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = np.where(arr < -LOG2, np.log1p(-np.exp(np.minimum(arr, -LOG2))), np.log(-np.expm1(np.minimum(arr, 0.0))))
    return float(out) if out.ndim == 0 else out


def gnmax_rdp_data_dependent(log_q: float, sigma: float) -> np.ndarray:
    """PATE's data-dependent RDP of one GNMax answer at ``ORDERS`` (Papernot et al. 2018, Theorem 6, with the
    higher orders μ₂ = σ·sqrt(ln 1/q), μ₁ = μ₂ + 1 of their Proposition 10); where the theorem's conditions fail,
    the data-independent λ/σ². Note: this bound depends on the votes, so the ε it gives is not itself private
    (the paper releases it through smooth sensitivity); the run's guarantee is the data-independent ε."""
    data_independent = ORDERS / sigma**2
    if math.isinf(log_q) and log_q < 0:
        return np.zeros_like(ORDERS)
    variance = sigma**2
    mu2 = math.sqrt(variance * -log_q)
    mu1 = mu2 + 1.0
    if mu2 <= 1.0:
        return data_independent
    eps1, eps2 = mu1 / variance, mu2 / variance
    log_a2 = (mu2 - 1.0) * eps2
    increasing = log_q <= log_a2 - mu2 * (math.log(1 + 1 / (mu1 - 1)) + math.log(1 + 1 / (mu2 - 1)))
    mask = mu1 > ORDERS
    if not (mask.any() and increasing and -log_q > eps2):
        return data_independent
    log_1mq = log1mexp(log_q)
    log_a = (ORDERS - 1) * (log_1mq - log1mexp((log_q + eps2) * (1 - 1 / mu2)))
    log_b = (ORDERS - 1) * (eps1 - log_q / (mu1 - 1))
    bound = np.logaddexp(log_1mq + log_a, log_q + log_b) / (ORDERS - 1)
    out = data_independent.copy()
    out[mask] = np.minimum(data_independent, bound)[mask]
    return out


def threshold_log_pr_answered(votes: np.ndarray, threshold: float, threshold_sigma: float) -> np.ndarray:
    """ln Pr[max_j n_j + N(0, σ₁²) ≥ T] per query (rows of ``votes``): the threshold check's probability of
    passing, the top count rounded to a whole vote as in the authors' analysis."""
    return log_normal_sf(threshold - np.rint(votes.max(1)), threshold_sigma)


def threshold_rdp_data_dependent(log_pr_answered: float, threshold_sigma: float) -> np.ndarray:
    """Data-dependent RDP of one threshold check (Papernot et al. 2018, Theorem 6 applied to the check): its
    outcome is nearly certain when the top count is far from T, and q is the less likely outcome's probability.
    The check sees the top count, which moves by 1 when one teacher changes its vote (GNMax's histogram moves by
    √2), so the bound is GNMax's at σ = √2·σ₁; where it does not apply, the data-independent λ/(2σ₁²)."""
    log_q = min(log_pr_answered, log1mexp(log_pr_answered))
    return gnmax_rdp_data_dependent(log_q, SQRT2 * threshold_sigma)


@dataclass(frozen=True)
class GNMaxAnswers:
    """The outcome of GNMax on a batch of queries: the answered ones' noisy-argmax classes."""

    answered: np.ndarray  # bool [n]
    labels: np.ndarray  # int [n], −1 where refused
    log_q: np.ndarray  # float [n], PATE's bound on the error probability of the query's answer (refused ones too)
    log_pr_answered: np.ndarray  # float [n], ln Pr[the threshold check passes] (0 without a check)


def gnmax(votes: np.ndarray, sigma: float, threshold: float | None, threshold_sigma: float | None,
          rng: np.random.Generator) -> GNMaxAnswers:
    """Confident GNMax (Papernot et al. 2018, Algorithm 1): a query is answered when its top vote count plus
    N(0, σ₁²) reaches ``threshold`` (always, when ``threshold`` is None: plain GNMax), with
    argmax_j (n_j + N(0, σ²))."""
    n = len(votes)
    if threshold is not None:
        answered = votes.max(1) + rng.normal(0.0, threshold_sigma, n) >= threshold
        log_pr_answered = threshold_log_pr_answered(votes, threshold, threshold_sigma)
    else:
        answered = np.ones(n, dtype=bool)
        log_pr_answered = np.zeros(n)
    noisy = votes + rng.normal(0.0, sigma, votes.shape)
    labels = np.where(answered, noisy.argmax(1), -1)
    log_q = np.array([gnmax_log_q(v, sigma) for v in votes])
    return GNMaxAnswers(answered=answered, labels=labels, log_q=log_q, log_pr_answered=log_pr_answered)
