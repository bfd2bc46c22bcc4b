"""Privacy settings: clipping, noise mechanisms and PATE's GNMax, one ``PrivacyMechanism`` class per
``privacy=`` setting behind a registry, each with its parameter dataclass (``fedkd.privacy_params``, where the
rules on composing a setting with the rest of the config live too). A mechanism declares its hooks
(client training, client-side noise, a server release) and its unit; the round loop asks these declarations and
never branches on a mechanism's name. Accounting lives in ``fedkd.accounting``.

Units of privacy (say which guarantee a number is):
- ``dpsgd``: example-level, per client (Opacus DP-SGD on each teacher); the run's ε is the largest client's.
- ``central_gaussian``, ``local_gaussian``, ``gnmax``: client-level (replacing one client's whole shard).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from fedkd.accounting import (
    ORDERS,
    SQRT2,
    PrivacyBudgetError,
    calibrate_gaussian,
    dpsgd_epsilon,
    dpsgd_noise_multiplier,
    epsilon_from_rdp,
    gaussian_rdp,
    gnmax,
    gnmax_rdp_data_dependent,
    threshold_rdp_data_dependent,
)
from fedkd.config import ClientPrivacy, PrivacyConfig, RunConfig
from fedkd.noise import gaussian_noise, project_to_simplex
from fedkd.privacy_params import DpSgdConfig, GaussianPrivacyConfig, GNMaxConfig, NoisyPrivacyConfig
from fedkd.registry import Registry
from fedkd.soft_labels import AggregationInputs

if TYPE_CHECKING:
    from fedkd.aggregators import Aggregator

PRIVACY_MECHANISMS = Registry("privacy mechanism", section="privacy", params=PrivacyConfig)


# ------------------------------------------------------------------------------------------------------ plans


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
    # gnmax with the smooth-sensitivity release: the data-dependent RDP at its fixed order and the bounds A(d) on
    # that RDP's local sensitivity, summed over this batch's threshold checks and answers
    smooth: tuple[float, np.ndarray] | None = None


# ------------------------------------------------------------------------------------------------ mechanisms


class PrivacyMechanism:
    """What a ``privacy=`` setting changes. Defaults: nothing (``privacy=none``)."""

    unit: ClassVar[str] = "none"  # none | example | client
    client_noise: ClassVar[bool] = False  # clients noise their own soft labels before sending (local_gaussian)
    data_dependent_accounting: ClassVar[bool] = False  # the ledger's data-dependent ε is worth reporting (PATE)

    def __init__(self, cfg: PrivacyConfig) -> None:
        self.cfg = cfg

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], aggregator: type[Aggregator]) -> PrivacyPlan:
        """Resolve σ (from the target ε where one is given) for the releases the run plans with ``aggregator``
        (its class); raises ``PrivacyBudgetError`` when the run cannot stay within its ε."""
        return PrivacyPlan(noise_multiplier=None, releases_per_query=0, planned_queries=0, planned_epsilon=None,
                           cap=None)

    def client_privacy(self, run: RunConfig, plan: PrivacyPlan, release_counts: bool) -> ClientPrivacy:
        """What the clients must do (travels in their job); ``release_counts``: the aggregator reads their class
        counts. Under any private setting a client sends no exact statistic of its shard."""
        return ClientPrivacy(name=self.cfg.name, delta=self.cfg.delta, withhold_statistics=self.unit != "none")

    def query_rdp(self, plan: PrivacyPlan, count: int) -> np.ndarray:
        """Worst-case (data-independent) RDP of answering ``count`` more queries."""
        return np.zeros_like(ORDERS)

    def data_problem(self, plan: PrivacyPlan, num_classes: int) -> str | None:
        """What makes this setting unsound on data of ``num_classes`` classes, or None."""
        return None


class ServerRelease(PrivacyMechanism, ABC):
    """A mechanism in which the server releases noisy targets for the queried points (central_gaussian, gnmax);
    the student distills on those released targets alone."""

    @abstractmethod
    def release(self, plan: PrivacyPlan, inputs: AggregationInputs, aggregator: Aggregator, student: torch.nn.Module,
                x: torch.Tensor, generator: torch.Generator, rng: np.random.Generator) -> Release:
        """Noisy targets for newly queried points, and the RDP they cost."""


def _gaussian_plan(cfg: NoisyPrivacyConfig, queries: int, releases_per_query: int, sensitivity: float | None = None,
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


@PRIVACY_MECHANISMS.register("dpsgd", params=DpSgdConfig)
class DpSgdTeachers(PrivacyMechanism):
    """DP-SGD teachers (Abadi et al. 2016, through Opacus): per-sample gradients clipped to ``clip``, Gaussian noise
    σ·clip, Poisson sampling; each client's example-level (ε, δ) from Opacus' RDP accountant. Soft labels of a DP
    teacher are post-processing and cost nothing more."""

    unit = "example"

    def client_privacy(self, run: RunConfig, plan: PrivacyPlan, release_counts: bool) -> ClientPrivacy:
        p = self.cfg
        return ClientPrivacy(name=p.name, epsilon=p.epsilon, delta=p.delta, noise_multiplier=p.noise_multiplier,
                             clip=p.clip, num_rounds=run.federation.num_rounds, temperature=run.student.temperature,
                             count_noise=p.count_noise if release_counts else 0.0, dp_sgd=True,
                             withhold_statistics=True)

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], aggregator: type[Aggregator]) -> PrivacyPlan:
        privacy = self.client_privacy(run, PrivacyPlan(None, 0, 0, None, None), False)
        sigmas, epsilons = [], []
        for n in shard_sizes:
            sigma = dpsgd_noise_multiplier(privacy, n, run.teacher.epochs, run.teacher.batch_size)
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


@PRIVACY_MECHANISMS.register("central_gaussian", params=GaussianPrivacyConfig)
class CentralGaussian(ServerRelease):
    """Trusted server, client-level DP: each client's tempered soft-label vector clipped to L2 ≤ c, the aggregate
    of every queried point released once with N(0, σ²Δ²I) added, Δ the aggregator's sensitivity, and projected
    onto the simplex; the student trains on those released targets only. METHODS.md "central soft-label DP"."""

    unit = "client"

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], aggregator: type[Aggregator]) -> PrivacyPlan:
        queries = run.query.planned_queries(pool_size, run.federation.num_rounds)
        return _gaussian_plan(self.cfg, queries, 1, aggregator.sensitivity(self.cfg.clip, run.federation.num_clients))

    def query_rdp(self, plan: PrivacyPlan, count: int) -> np.ndarray:
        return gaussian_rdp(plan.noise_multiplier, count) if count else np.zeros_like(ORDERS)

    def release(self, plan: PrivacyPlan, inputs: AggregationInputs, aggregator: Aggregator, student: torch.nn.Module,
                x: torch.Tensor, generator: torch.Generator, rng: np.random.Generator) -> Release:
        """q̃ = Π_simplex(q + N(0, (σΔ)² I)) per point, q the aggregator's release targets (for the mean, the mean
        of clipped soft labels), computed once with the current student."""
        n = inputs.teacher_logits.shape[1]
        q = aggregator.release_targets(inputs, self.cfg.clip, student, x)
        noisy = project_to_simplex(q + gaussian_noise(tuple(q.shape), plan.noise_multiplier * plan.sensitivity,
                                                      generator))
        rdp = self.query_rdp(plan, n)
        answered = np.ones(n, dtype=bool)
        return Release(targets=noisy.float(), answered=answered, rdp=rdp, rdp_data_dependent=rdp,
                       stats={"noise_std": plan.noise_multiplier * plan.sensitivity,
                              "l1_noise_effect": float((noisy - q).abs().sum(1).mean()),
                              "per_group": _answers_per_group(answered, noisy.argmax(1).numpy(), inputs)})


@PRIVACY_MECHANISMS.register("local_gaussian", params=GaussianPrivacyConfig)
class LocalGaussian(PrivacyMechanism):
    """No trusted server: each client clips its tempered soft-label vector to L2 ≤ c and adds N(0, σ²(√2·c)²I)
    before sending (its ERM base's too, when asked: a second release); the server sees only noisy vectors, which
    it projects onto the simplex. Each client's guarantee is client-level. METHODS.md "local soft-label DP"."""

    unit = "client"
    client_noise = True

    def client_privacy(self, run: RunConfig, plan: PrivacyPlan, release_counts: bool) -> ClientPrivacy:
        p = self.cfg
        return ClientPrivacy(name=p.name, delta=p.delta,
                             noise_multiplier=plan.noise_multiplier if plan.noise_multiplier is not None
                             else p.noise_multiplier, clip=p.clip, num_rounds=run.federation.num_rounds,
                             temperature=run.student.temperature, noise_answers=True, withhold_statistics=True)

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], aggregator: type[Aggregator]) -> PrivacyPlan:
        queries = run.query.planned_queries(pool_size, run.federation.num_rounds)
        return _gaussian_plan(self.cfg, queries, 2 if aggregator.needs_base else 1, SQRT2 * min(self.cfg.clip, 1.0))

    def query_rdp(self, plan: PrivacyPlan, count: int) -> np.ndarray:
        total = count * plan.releases_per_query
        return gaussian_rdp(plan.noise_multiplier, total) if total else np.zeros_like(ORDERS)


@PRIVACY_MECHANISMS.register("gnmax", params=GNMaxConfig)
class GNMaxVoting(ServerRelease):
    """PATE's noisy argmax of the teachers' votes (Papernot et al. 2018, GNMax and Confident GNMax): the student
    trains on one-hot answers; refused queries are counted and dropped. Data-independent RDP λ/σ² per answer and
    λ/(2σ₁²) per threshold check; beside it the data-dependent bound of Theorem 6 on both steps: every check
    (answered or refused) and every answer, as the mechanism ran."""

    unit = "client"
    data_dependent_accounting = True

    def plan(self, run: RunConfig, pool_size: int, shard_sizes: list[int], aggregator: type[Aggregator]) -> PrivacyPlan:
        queries = run.query.planned_queries(pool_size, run.federation.num_rounds)
        if self.cfg.threshold is not None:
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
        if self.cfg.threshold is not None:
            rdp = rdp + gaussian_rdp(self.cfg.threshold_sigma, count)
        return rdp

    def data_problem(self, plan: PrivacyPlan, num_classes: int) -> str | None:
        """Conditions C5-C6 of the smooth-sensitivity analysis (Papernot et al. 2018, App. B.4.2) at (σ, classes,
        λ): without them Algorithm 3 does not bound the local sensitivity."""
        if not self.cfg.smooth_sensitivity:
            return None
        from fedkd.local_sensitivity import check_gnmax_conditions

        order = self.cfg.smooth_sensitivity_order
        c5, c6 = check_gnmax_conditions(plan.noise_multiplier, num_classes, order)
        if c5 and c6:
            return None
        failed = " and ".join(name for name, holds in (("C5", c5), ("C6", c6)) if not holds)
        return (f"the smooth-sensitivity release's condition {failed} fails at σ = {plan.noise_multiplier}, "
                f"{num_classes} classes, λ = {order} (Papernot et al. 2018, App. B.4.2): choose a lower "
                "privacy.smooth_sensitivity_order or a larger privacy.noise_multiplier")

    def release(self, plan: PrivacyPlan, inputs: AggregationInputs, aggregator: Aggregator, student: torch.nn.Module,
                x: torch.Tensor, generator: torch.Generator, rng: np.random.Generator) -> Release:
        num_classes = inputs.teacher_logits.shape[-1]
        votes = torch.nn.functional.one_hot(inputs.teacher_logits.argmax(-1), num_classes).sum(0).numpy()
        answers = gnmax(votes.astype(np.float64), plan.noise_multiplier, self.cfg.threshold,
                        self.cfg.threshold_sigma, rng)
        num_answered = int(answers.answered.sum())
        zero = np.zeros_like(ORDERS)
        if self.cfg.threshold is not None:
            threshold_rdp = gaussian_rdp(self.cfg.threshold_sigma, len(votes))
            threshold_rdp_dd = sum((threshold_rdp_data_dependent(lp, self.cfg.threshold_sigma)
                                    for lp in answers.log_pr_answered), zero)
        else:
            threshold_rdp = threshold_rdp_dd = zero
        rdp = threshold_rdp + (gaussian_rdp(plan.noise_multiplier / SQRT2, num_answered) if num_answered else zero)
        # the answers' data-dependent charge: each answer given, or every query's answer by Pr[answered]
        charge = np.exp(answers.log_pr_answered) if self.cfg.threshold_charge == "expected" else answers.answered
        rdp_dd = threshold_rdp_dd + sum((w * gnmax_rdp_data_dependent(lq, plan.noise_multiplier)
                                         for w, lq in zip(charge, answers.log_q, strict=True) if w > 0), zero)
        smooth = None
        if self.cfg.smooth_sensitivity:
            from fedkd.local_sensitivity import data_dependent_cost  # scipy.optimize: only PATE's server needs it

            teachers, order = inputs.teacher_logits.shape[0], self.cfg.smooth_sensitivity_order
            if self.cfg.threshold is not None:  # every threshold check, and the answers among them
                smooth = data_dependent_cost(votes, plan.noise_multiplier, order, answered=charge,
                                             threshold=self.cfg.threshold, threshold_sigma=self.cfg.threshold_sigma,
                                             num_teachers=teachers, check_conditions=False)
            else:
                smooth = data_dependent_cost(votes[answers.answered], plan.noise_multiplier, order,
                                             num_teachers=teachers, check_conditions=False)
        targets = torch.nn.functional.one_hot(torch.from_numpy(answers.labels[answers.answered]), num_classes).float()
        plurality = votes.argmax(1)
        agree = answers.labels[answers.answered] == plurality[answers.answered]
        return Release(targets=targets, answered=answers.answered, rdp=rdp, rdp_data_dependent=rdp_dd, smooth=smooth,
                       stats={"answered": num_answered, "refused": int(len(votes) - num_answered),
                              "agree_with_plurality": float(agree.mean()) if num_answered else None,
                              "per_group": _answers_per_group(answers.answered, answers.labels, inputs)})


def _answers_per_group(answered: np.ndarray, labels: np.ndarray, inputs: AggregationInputs) -> dict:
    """Per group of the queried points (evaluation-only labels): queries asked, answered, and how many released
    labels (``labels``: the class each point was given, −1 where refused) were the true class; which groups a
    threshold refuses, and how wrong the labels it lets through are."""
    if inputs.groups is None or inputs.labels is None:
        return {}
    correct = answered & (labels == inputs.labels)
    out = {}
    for g in np.unique(inputs.groups):
        mask = inputs.groups == g
        out[inputs.group_names[g]] = {"asked": int(mask.sum()), "answered": int(answered[mask].sum()),
                                      "correct": int(correct[mask].sum())}
    return out


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
