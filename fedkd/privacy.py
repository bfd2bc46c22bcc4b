"""Privacy settings (issue 5): clipping, noise mechanisms, PATE's GNMax, and accounting through Opacus' RDP
analysis. One ``PrivacyMechanism`` class per ``privacy=`` setting, behind a registry; the server's round loop asks
the mechanism what to do, and never branches on its name.

Units of privacy (say which guarantee a number is):
- ``dpsgd``: example-level, per client (Opacus DP-SGD on each teacher); the run's ε is the largest client's.
- ``central_gaussian``, ``local_gaussian``, ``gnmax``: client-level (replacing one client's whole shard).

Accounting is Rényi DP composed over every mechanism invocation of the run and converted to (ε, δ) by Opacus
(``compute_rdp``, ``get_privacy_spent``, ``get_noise_multiplier``). The one RDP curve written here by hand is PATE's
data-dependent bound for GNMax (Papernot et al. 2018, Theorem 6 with Proposition 7), which no maintained library
ships; the data-independent cost it falls back to is Opacus' Gaussian curve.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.special
import scipy.stats
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import get_noise_multiplier

from fedkd.config import ClientPrivacy, PrivacyConfig, RunConfig
from fedkd.registry import Registry
from fedkd.soft_labels import AggregationInputs, tempered_probs

if TYPE_CHECKING:
    from fedkd.aggregation import Aggregator

PRIVACY_MECHANISMS = Registry("privacy mechanism")
ORDERS = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=np.float64)
SQRT2 = math.sqrt(2.0)


class PrivacyBudgetError(ValueError):
    """The requested privacy budget cannot be met (or would be exceeded) by the configured run."""


# ----------------------------------------------------------------------------------------------- accounting


def gaussian_rdp(noise_multiplier: float, count: int = 1) -> np.ndarray:
    """RDP of ``count`` Gaussian mechanisms with noise std = ``noise_multiplier`` × L2 sensitivity (Mironov 2017:
    α / (2σ²) each), from Opacus' analysis at ``ORDERS``."""
    return np.asarray(compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=count, orders=list(ORDERS)))


def epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    """The (ε, δ) conversion of an RDP curve at ``ORDERS`` (Opacus' ``get_privacy_spent``)."""
    if not np.any(rdp > 0):
        return 0.0
    eps, _ = get_privacy_spent(orders=list(ORDERS), rdp=list(rdp), delta=delta)
    return float(eps)


def calibrate_gaussian(target_epsilon: float, delta: float, count: int) -> float:
    """The noise multiplier σ with which ``count`` Gaussian mechanisms compose to ``target_epsilon`` at ``delta``
    (Opacus' ``get_noise_multiplier`` with sampling rate 1, tolerance 0.5 % of ε)."""
    if count < 1:
        raise PrivacyBudgetError("nothing to calibrate: the run releases no soft labels")
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=1.0,
                                      steps=count, accountant="rdp", epsilon_tolerance=0.005 * target_epsilon))


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

    def epsilon_if(self, rdp: np.ndarray) -> float:
        """ε after also spending ``rdp``: to stop before a target is exceeded."""
        return epsilon_from_rdp(self.rdp + rdp, self.delta)

    def state_dict(self) -> dict:
        return {"rdp": self.rdp.copy(), "rdp_data_dependent": self.rdp_data_dependent.copy(),
                "invocations": self.invocations}

    def load_state_dict(self, state: dict) -> None:
        self.rdp, self.rdp_data_dependent = state["rdp"].copy(), state["rdp_data_dependent"].copy()
        self.invocations = state["invocations"]


# ----------------------------------------------------------------------------------------- clipping, noise


def clip_rows(probs: torch.Tensor, clip: float) -> torch.Tensor:
    """Each vector (last axis) scaled to L2 norm ≤ ``clip`` (left alone when already inside)."""
    norms = probs.norm(dim=-1, keepdim=True)
    return probs * torch.clamp(clip / norms.clamp_min(1e-12), max=1.0)


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (Duchi et al. 2008, Fig. 1): the closest
    distribution to a noisy vector; post-processing, so it costs no privacy. Written by hand: torch has none."""
    sorted_v, _ = torch.sort(v, dim=-1, descending=True)
    cumsum = sorted_v.cumsum(-1) - 1.0
    ks = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    support = (sorted_v - cumsum / ks) > 0
    rho = support.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where the condition holds
    theta = cumsum.gather(-1, rho) / (rho + 1).to(v.dtype)
    return torch.clamp(v - theta, min=0.0)


def probs_to_logits(probs: torch.Tensor, temperature: float, floor: float = 1e-12) -> torch.Tensor:
    """Logits z with softmax(z / τ) = ``probs`` (a zero probability becomes τ · log ``floor``)."""
    return temperature * torch.log(probs.clamp_min(floor))


def gaussian_noise(shape: tuple[int, ...], std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64) * std


# ----------------------------------------------------------------------------------------------------- GNMax


def gnmax_log_q(votes: np.ndarray, sigma: float) -> float:
    """Upper bound on ln Pr[GNMax answer ≠ plurality class] (Papernot et al. 2018, Proposition 7):
    q ≤ Σ_{j≠j*} Pr[N(0, 2σ²) ≥ n_{j*} − n_j], capped at 1 − 1/C."""
    top = int(np.argmax(votes))
    gaps = (votes[top] - np.delete(votes, top)).astype(np.float64)
    log_q = float(scipy.special.logsumexp(scipy.stats.norm.logsf(gaps, scale=SQRT2 * sigma)))
    return min(log_q, math.log(1.0 - 1.0 / len(votes)))


def _log1mexp(x: float) -> float:
    """log(1 − e^x) for x < 0, stable at both ends."""
    return math.log1p(-math.exp(x)) if x < -1 else math.log(-math.expm1(x))


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
    log_1mq = _log1mexp(log_q)
    log_a = (ORDERS - 1) * (log_1mq - _log1mexp((log_q + eps2) * (1 - 1 / mu2)))
    log_b = (ORDERS - 1) * (eps1 - log_q / (mu1 - 1))
    bound = np.logaddexp(log_1mq + log_a, log_q + log_b) / (ORDERS - 1)
    out = data_independent.copy()
    out[mask] = np.minimum(data_independent, bound)[mask]
    return out


@dataclass(frozen=True)
class GNMaxAnswers:
    """The outcome of GNMax on a batch of queries: the answered ones' noisy-argmax classes."""

    answered: np.ndarray  # bool [n]
    labels: np.ndarray  # int [n], −1 where refused
    log_q: np.ndarray  # float [n], PATE's bound on the answer's error probability (answered queries)


def gnmax(votes: np.ndarray, sigma: float, threshold: float, threshold_sigma: float,
          rng: np.random.Generator) -> GNMaxAnswers:
    """Confident GNMax (Papernot et al. 2018, Algorithm 1): a query is answered when its top vote count plus
    N(0, σ₁²) reaches ``threshold`` (always, when ``threshold`` is 0), with argmax_j (n_j + N(0, σ²))."""
    n = len(votes)
    if threshold > 0:
        answered = votes.max(1) + rng.normal(0.0, threshold_sigma, n) >= threshold
    else:
        answered = np.ones(n, dtype=bool)
    noisy = votes + rng.normal(0.0, sigma, votes.shape)
    labels = np.where(answered, noisy.argmax(1), -1)
    log_q = np.array([gnmax_log_q(v, sigma) if a else 0.0 for v, a in zip(votes, answered, strict=True)])
    return GNMaxAnswers(answered=answered, labels=labels, log_q=log_q)


# ------------------------------------------------------------------------------------------------ mechanisms


def aggregate_sensitivity(aggregator_name: str, clip: float, num_clients: int) -> float:
    """L2 sensitivity of one point's aggregated soft label to replacing one client (METHODS.md "central
    soft-label DP"): the mean of M vectors clipped to c moves by at most √2·min(c, 1)/M (non-negative vectors of
    norm ≤ c differ by at most √2·c; a probability vector already has norm ≤ 1); any other aggregate lies in the
    simplex, whose diameter is √2, and a robust weighting can hand one client all the weight."""
    if aggregator_name == "mean":
        return SQRT2 * min(clip, 1.0) / num_clients
    return SQRT2


@dataclass(frozen=True)
class PrivacyPlan:
    """A run's privacy, resolved before it starts: the noise multiplier and what the planned releases cost."""

    noise_multiplier: float | None  # σ the mechanism uses (None: no noise, or per client for dpsgd)
    releases_per_query: int  # Gaussian releases per queried point (local_gaussian with ERM bases: 2)
    planned_queries: int  # soft-label queries the run plans (per client)
    planned_epsilon: float | None  # ε if every planned release happens (dpsgd: the largest client's)
    cap: float | None  # ε the run must not exceed (stop querying before)
    sensitivity: float | None = None  # central_gaussian: L2 sensitivity Δ of one released aggregate
    client_noise_multipliers: list[float] = field(default_factory=list)  # dpsgd: σ of each client


@dataclass
class Release:
    """What a server-side mechanism released for a batch of queried points."""

    targets: torch.Tensor  # [n_answered, C] on the simplex
    answered: np.ndarray  # bool [n]
    rdp: np.ndarray
    rdp_data_dependent: np.ndarray
    stats: dict = field(default_factory=dict)


class PrivacyMechanism:
    """What a ``privacy=`` setting changes. Defaults: nothing (``privacy=none``)."""

    unit = "none"  # example | client
    client_noise = False  # clients noise their own soft labels before sending (local_gaussian)

    def __init__(self, cfg: PrivacyConfig) -> None:
        self.cfg = cfg

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], needs_base: bool) -> PrivacyPlan:
        """Resolve σ (from the target ε where one is given) for the releases the run plans; raises
        ``PrivacyBudgetError`` when the run cannot stay within its ε."""
        return PrivacyPlan(noise_multiplier=None, releases_per_query=0, planned_queries=0, planned_epsilon=None,
                           cap=None)

    def query_rdp(self, plan: PrivacyPlan, count: int) -> np.ndarray:
        """Worst-case (data-independent) RDP of answering ``count`` more queries."""
        return np.zeros_like(ORDERS)



class ServerRelease(PrivacyMechanism, ABC):
    """A mechanism in which the server releases noisy targets for the queried points (central_gaussian, gnmax);
    the student distills on those released targets alone."""

    @abstractmethod
    def release(self, plan: PrivacyPlan, inputs: AggregationInputs, aggregator: Aggregator, student: torch.nn.Module,
                x: torch.Tensor, generator: torch.Generator, rng: np.random.Generator) -> Release:
        """Noisy targets for newly queried points, and the RDP they cost."""


def _gaussian_plan(cfg: PrivacyConfig, queries: int, releases_per_query: int, sensitivity: float | None = None,
                   rdp_scale: float = 1.0) -> PrivacyPlan:
    """σ for ``queries × releases_per_query`` Gaussian releases: calibrated from ``cfg.epsilon`` unless given.
    ``rdp_scale`` maps σ to the Gaussian noise multiplier whose RDP a release costs (GNMax: σ/√2)."""
    count = queries * releases_per_query
    if cfg.noise_multiplier is None:
        sigma = calibrate_gaussian(cfg.epsilon, cfg.delta, count) / rdp_scale
        cap = None
    else:
        sigma, cap = cfg.noise_multiplier, cfg.epsilon
    planned = epsilon_from_rdp(gaussian_rdp(sigma * rdp_scale, count), cfg.delta) if count else 0.0
    if cap is not None and count and epsilon_from_rdp(gaussian_rdp(sigma * rdp_scale, 1), cfg.delta) > cap:
        raise PrivacyBudgetError(f"one release with privacy.noise_multiplier={sigma} already costs more than "
                                 f"privacy.epsilon={cap}: raise the noise multiplier or the target ε")
    return PrivacyPlan(noise_multiplier=sigma, releases_per_query=releases_per_query, planned_queries=queries,
                       planned_epsilon=planned, cap=cap, sensitivity=sensitivity)


@PRIVACY_MECHANISMS.register("none")
class NoPrivacy(PrivacyMechanism):
    """No noise, no accounting: ε = ∞."""


@PRIVACY_MECHANISMS.register("dpsgd")
class DpSgdTeachers(PrivacyMechanism):
    """DP-SGD teachers (Abadi et al. 2016, through Opacus): per-sample gradients clipped to ``clip``, Gaussian noise
    σ·clip, Poisson sampling; each client's example-level (ε, δ) from Opacus' RDP accountant. Soft labels of a DP
    teacher are post-processing and cost nothing more."""

    unit = "example"

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], needs_base: bool) -> PrivacyPlan:
        job = run.client_job(erm_base=needs_base)
        sigmas, epsilons = [], []
        for n in shard_sizes:
            sigma = dpsgd_noise_multiplier(job.privacy, n, run.teacher.epochs, run.teacher.batch_size)
            sigmas.append(sigma)
            epsilons.append(dpsgd_epsilon(sigma, n, run.teacher.batch_size, run.teacher.epochs * run.federation.
                                          num_rounds, self.cfg.delta, self.cfg.count_noise))
        cap = self.cfg.epsilon if self.cfg.noise_multiplier is not None else None
        if cap is not None and max(epsilons) > cap * 1.005:
            worst = int(np.argmax(epsilons))
            raise PrivacyBudgetError(
                f"with privacy.noise_multiplier={self.cfg.noise_multiplier}, client {worst} ({shard_sizes[worst]} "
                f"examples) would spend ε = {max(epsilons):.3g} > privacy.epsilon={cap} over "
                f"{run.federation.num_rounds} rounds: raise the noise multiplier, or give only the target ε")
        return PrivacyPlan(noise_multiplier=None, releases_per_query=0, planned_queries=0,
                           planned_epsilon=max(epsilons), cap=cap, client_noise_multipliers=sigmas)


def dpsgd_sample_rate(shard_size: int, batch_size: int) -> float:
    """Poisson sampling rate of Opacus' DPDataLoader for a loader of ``batch_size`` over ``shard_size``."""
    return 1.0 / math.ceil(shard_size / batch_size)


def dpsgd_noise_multiplier(privacy: ClientPrivacy, shard_size: int, epochs_per_round: int, batch_size: int) -> float:
    """The client's DP-SGD σ: as given, or calibrated by Opacus for its target ε over all rounds of training."""
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    return float(get_noise_multiplier(target_epsilon=privacy.epsilon, target_delta=privacy.delta,
                                      sample_rate=dpsgd_sample_rate(shard_size, batch_size),
                                      epochs=epochs_per_round * privacy.num_rounds, accountant="rdp",
                                      epsilon_tolerance=0.005 * privacy.epsilon))


def dpsgd_epsilon(sigma: float, shard_size: int, batch_size: int, epochs: int, delta: float,
                  count_noise: float = 0.0) -> float:
    """ε of ``epochs`` of DP-SGD (Opacus' RDP accountant), plus one release of noisy class counts when
    ``count_noise`` > 0."""
    q = dpsgd_sample_rate(shard_size, batch_size)
    return dpsgd_history_epsilon([(sigma, q, epochs * int(1 / q))], delta, count_noise)


def dpsgd_history_epsilon(history: list[tuple[float, float, int]], delta: float, count_noise: float = 0.0) -> float:
    """ε of an Opacus RDP-accountant history of (noise multiplier, sample rate, steps), plus one release of noisy
    class counts when ``count_noise`` > 0 (which Opacus' accountant cannot hold)."""
    rdp = sum((np.asarray(compute_rdp(q=q, noise_multiplier=s, steps=int(n), orders=list(ORDERS)))
               for s, q, n in history), np.zeros_like(ORDERS))
    if count_noise > 0:
        rdp = rdp + gaussian_rdp(count_noise)
    return epsilon_from_rdp(rdp, delta)


@PRIVACY_MECHANISMS.register("central_gaussian")
class CentralGaussian(ServerRelease):
    """Trusted server, client-level DP: each client's tempered soft-label vector clipped to L2 ≤ c, the aggregate
    of every queried point released once with N(0, σ²Δ²I) added, Δ = ``aggregate_sensitivity``, and projected
    onto the simplex; the student trains on those released targets only. METHODS.md "central soft-label DP"."""

    unit = "client"

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], needs_base: bool) -> PrivacyPlan:
        queries = run.query.planned_queries(pool_size, run.federation.num_rounds)
        return _gaussian_plan(self.cfg, queries, 1,
                              aggregate_sensitivity(run.aggregator.name, self.cfg.clip, run.federation.num_clients))

    def query_rdp(self, plan: PrivacyPlan, count: int) -> np.ndarray:
        return gaussian_rdp(plan.noise_multiplier, count) if count else np.zeros_like(ORDERS)

    def release(self, plan: PrivacyPlan, inputs: AggregationInputs, aggregator: Aggregator, student: torch.nn.Module,
                x: torch.Tensor, generator: torch.Generator, rng: np.random.Generator) -> Release:
        """q̃ = Π_simplex(q + N(0, (σΔ)² I)) per point, q the aggregate of clipped soft labels (the mean) or the
        aggregator's own targets (in the simplex), computed once with the current student."""
        n = inputs.teacher_logits.shape[1]
        if aggregator.cfg.name == "mean":
            q = clip_rows(tempered_probs(inputs.teacher_logits.double(), inputs.temperature), self.cfg.clip).mean(0)
        else:
            aggregator.prepare(inputs)
            batches = []
            for start in range(0, n, 256):
                idx = np.arange(start, min(n, start + 256))
                xb = x[idx]
                batches.append(aggregator.targets(idx, student, xb, student(xb))[0].detach().cpu().double())
            q = torch.cat(batches)
        noisy = project_to_simplex(q + gaussian_noise(tuple(q.shape), plan.noise_multiplier * plan.sensitivity,
                                                      generator))
        rdp = self.query_rdp(plan, n)
        return Release(targets=noisy.float(), answered=np.ones(n, dtype=bool), rdp=rdp, rdp_data_dependent=rdp,
                       stats={"noise_std": plan.noise_multiplier * plan.sensitivity,
                              "l1_noise_effect": float((noisy - q).abs().sum(1).mean())})


@PRIVACY_MECHANISMS.register("local_gaussian")
class LocalGaussian(PrivacyMechanism):
    """No trusted server: each client clips its tempered soft-label vector to L2 ≤ c and adds N(0, σ²(√2·c)²I)
    before sending (its ERM base's too, when asked: a second release); the server sees only noisy vectors, which
    it projects onto the simplex. Each client's guarantee is client-level. METHODS.md "local soft-label DP"."""

    unit = "client"
    client_noise = True

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], needs_base: bool) -> PrivacyPlan:
        queries = run.query.planned_queries(pool_size, run.federation.num_rounds)
        return _gaussian_plan(self.cfg, queries, 2 if needs_base else 1, SQRT2 * min(self.cfg.clip, 1.0))

    def query_rdp(self, plan: PrivacyPlan, count: int) -> np.ndarray:
        total = count * plan.releases_per_query
        return gaussian_rdp(plan.noise_multiplier, total) if total else np.zeros_like(ORDERS)


@PRIVACY_MECHANISMS.register("gnmax")
class GNMaxVoting(ServerRelease):
    """PATE's noisy argmax of the teachers' votes (Papernot et al. 2018, GNMax and Confident GNMax): the student
    trains on one-hot answers; refused queries are counted and dropped. Data-independent RDP λ/σ² per answer and
    λ/(2σ₁²) per threshold check; the data-dependent bound of Theorem 6 reported beside it."""

    unit = "client"

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], needs_base: bool) -> PrivacyPlan:
        queries = run.query.planned_queries(pool_size, run.federation.num_rounds)
        if self.cfg.threshold > 0:
            plan = PrivacyPlan(noise_multiplier=self.cfg.noise_multiplier, releases_per_query=1,
                               planned_queries=queries, planned_epsilon=None, cap=self.cfg.epsilon)
            one = epsilon_from_rdp(self.query_rdp(plan, 1), self.cfg.delta)
            if plan.cap is not None and one > plan.cap:
                raise PrivacyBudgetError(f"one confident-GNMax query already costs ε = {one:.3g} > privacy.epsilon="
                                         f"{plan.cap}: raise privacy.noise_multiplier or privacy.threshold_sigma")
            planned = epsilon_from_rdp(self.query_rdp(plan, queries), self.cfg.delta)
            return PrivacyPlan(noise_multiplier=plan.noise_multiplier, releases_per_query=1, planned_queries=queries,
                               planned_epsilon=planned, cap=plan.cap)
        return _gaussian_plan(self.cfg, queries, 1, rdp_scale=1 / SQRT2)

    def query_rdp(self, plan: PrivacyPlan, count: int) -> np.ndarray:
        """λ/σ² per answer (GNMax's vote histogram moves by √2 when one teacher changes its vote: a Gaussian
        mechanism of noise multiplier σ/√2), plus λ/(2σ₁²) per threshold check (the top count moves by 1)."""
        if not count:
            return np.zeros_like(ORDERS)
        rdp = gaussian_rdp(plan.noise_multiplier / SQRT2, count)
        if self.cfg.threshold > 0:
            rdp = rdp + gaussian_rdp(self.cfg.threshold_sigma, count)
        return rdp

    def release(self, plan: PrivacyPlan, inputs: AggregationInputs, aggregator: Aggregator, student: torch.nn.Module,
                x: torch.Tensor, generator: torch.Generator, rng: np.random.Generator) -> Release:
        num_classes = inputs.teacher_logits.shape[-1]
        votes = torch.nn.functional.one_hot(inputs.teacher_logits.argmax(-1), num_classes).sum(0).numpy()
        answers = gnmax(votes.astype(np.float64), plan.noise_multiplier, self.cfg.threshold,
                        self.cfg.threshold_sigma, rng)
        num_answered = int(answers.answered.sum())
        threshold_rdp = (gaussian_rdp(self.cfg.threshold_sigma, len(votes)) if self.cfg.threshold > 0
                         else np.zeros_like(ORDERS))
        rdp = threshold_rdp + (gaussian_rdp(plan.noise_multiplier / SQRT2, num_answered) if num_answered
                               else np.zeros_like(ORDERS))
        rdp_dd = threshold_rdp + sum((gnmax_rdp_data_dependent(lq, plan.noise_multiplier)
                                      for lq in answers.log_q[answers.answered]), np.zeros_like(ORDERS))
        targets = torch.nn.functional.one_hot(torch.from_numpy(answers.labels[answers.answered]), num_classes).float()
        plurality = votes.argmax(1)
        agree = answers.labels[answers.answered] == plurality[answers.answered]
        return Release(targets=targets, answered=answers.answered, rdp=rdp, rdp_data_dependent=rdp_dd,
                       stats={"answered": num_answered, "refused": int(len(votes) - num_answered),
                              "agree_with_plurality": float(agree.mean()) if num_answered else None})


def local_noise(logits: np.ndarray, cfg: PrivacyConfig, temperature: float, generator: torch.Generator) -> np.ndarray:
    """A client's local-DP release of its logits [n, C]: tempered probabilities clipped to ``cfg.clip``, plus
    N(0, (σ·√2·min(c, 1))²) per value, projected onto the simplex, returned as logits at ``temperature``."""
    probs = torch.softmax(torch.from_numpy(logits).double() / temperature, dim=-1)
    clipped = clip_rows(probs, cfg.clip)
    std = cfg.noise_multiplier * SQRT2 * min(cfg.clip, 1.0)
    noisy = project_to_simplex(clipped + gaussian_noise(tuple(clipped.shape), std, generator))
    return probs_to_logits(noisy, temperature).float().numpy()


def noisy_class_counts(counts: np.ndarray, noise_multiplier: float, rng: np.random.Generator) -> np.ndarray:
    """A client's class histogram released with N(0, σ²) per count (adding or removing one example moves one
    count by 1: L2 sensitivity 1), rounded and floored at 0 (post-processing)."""
    return np.maximum(np.rint(counts + rng.normal(0.0, noise_multiplier, counts.shape)), 0).astype(np.int64)


class ReleasedTargets:
    """The targets a server-side mechanism released, per transfer point (a re-queried point keeps its latest);
    the student distills on these alone, as a fixed aggregator (everything after the release is post-processing)."""

    def __init__(self, pool_size: int, num_classes: int) -> None:
        self.q = torch.zeros(pool_size, num_classes)
        self.mask = np.zeros(pool_size, dtype=bool)

    def add(self, indices: np.ndarray, targets: torch.Tensor) -> None:
        self.q[torch.from_numpy(indices)] = targets
        self.mask[indices] = True

    @property
    def indices(self) -> np.ndarray:
        return np.flatnonzero(self.mask)

    def targets(self, idx: np.ndarray, student: torch.nn.Module, x: torch.Tensor,
                student_logits: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Targets of positions ``idx`` of the released points (in ``indices`` order)."""
        return self.q[torch.from_numpy(self.indices[idx])], None

    def state_dict(self) -> dict:
        return {"q": self.q.clone(), "mask": self.mask.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.q, self.mask = state["q"].clone(), state["mask"].copy()


# ------------------------------------------------------------------------------------------- empirical check


def example_losses(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy of ``model`` on each (x, y): the score of a loss-threshold membership-inference attack."""
    from fedkd.training import predict_logits

    logits = predict_logits(model, x)
    return torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none").numpy()


def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray, member_groups: np.ndarray,
                   nonmember_groups: np.ndarray, group_names: tuple[str, ...]) -> dict:
    """AUC of the loss-threshold membership-inference attack (Yeom et al. 2018: guess "member" when the loss is
    low), overall and per group present on both sides: 0.5 = no leak the attack can see, 1 = perfect."""
    from sklearn.metrics import roc_auc_score

    def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
        labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        return float(roc_auc_score(labels, -np.r_[members, nonmembers]))

    per_group = {}
    for g, name in enumerate(group_names):
        a, b = member_losses[member_groups == g], nonmember_losses[nonmember_groups == g]
        if len(a) and len(b):
            per_group[name] = auc(a, b)
    return {"auc": auc(member_losses, nonmember_losses), "per_group_auc": per_group}
