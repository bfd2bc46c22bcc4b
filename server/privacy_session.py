"""The privacy side of a run: the mechanism and the plan it made before the first round, the RDP ledger of what
was released since, the targets a server-side mechanism released, and the generators its noise is drawn from.
The round loop asks it how many queries ε can still afford, has it release or account each round's answers, and
reads ε from it for metrics.jsonl and the summary."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from fedkd import protocol
from fedkd.accounting import RdpLedger
from fedkd.aggregators import Aggregator
from fedkd.checkpoint import restore_rng, rng_state
from fedkd.config import RunConfig
from fedkd.privacy import PRIVACY_MECHANISMS, ReleasedTargets, ServerRelease
from fedkd.smooth_sensitivity import release_of
from fedkd.soft_labels import AggregationInputs
from server.federation import FederationError


class PrivacySession:
    """``privacy=`` for one run: plans the noise for ``shard_sizes`` clients and a transfer pool of ``pool_size``
    points, then keeps the ledger, the released targets, and the ε the clients' DP-SGD reported."""

    def __init__(self, cfg: RunConfig, pool_size: int, num_classes: int, shard_sizes: list[int],
                 aggregator: Aggregator) -> None:
        self.cfg = cfg
        self.aggregator = aggregator
        self.mechanism = PRIVACY_MECHANISMS[cfg.privacy.name](cfg.privacy)
        self.plan = self.mechanism.plan(cfg, pool_size, shard_sizes, type(aggregator))
        self.ledger = RdpLedger(cfg.privacy.delta)
        self.released = ReleasedTargets(pool_size, num_classes)
        self.noise_generator = torch.Generator().manual_seed(cfg.seed * 7919 + 5)
        self.rng = np.random.default_rng([cfg.seed, 5])
        self.client_epsilon = 0.0
        # gnmax's smooth-sensitivity release: the data-dependent RDP at its order and the summed bounds A(d) on its
        # local sensitivity, d = 0 … num_clients − 1 (a round with fewer teachers keeps its last, largest, bound)
        self.smooth_rdp = 0.0
        self.smooth_bounds = np.zeros(cfg.federation.num_clients)

    def state_dict(self) -> dict:
        return {"ledger": self.ledger.state_dict(), "released": self.released.state_dict(),
                "client_epsilon": self.client_epsilon, "rng": rng_state(self.rng),
                "noise": self.noise_generator.get_state(),
                "smooth": {"rdp": self.smooth_rdp, "bounds": self.smooth_bounds.copy()}}

    def load_state_dict(self, state: dict) -> None:
        self.ledger.load_state_dict(state["ledger"])
        self.released.load_state_dict(state["released"])
        self.client_epsilon = state["client_epsilon"]
        restore_rng(self.rng, state["rng"])
        self.noise_generator.set_state(state["noise"])
        smooth = state.get("smooth", {"rdp": 0.0, "bounds": self.smooth_bounds})  # checkpoints written before it
        self.smooth_rdp, self.smooth_bounds = smooth["rdp"], smooth["bounds"].copy()

    @property
    def active(self) -> bool:
        """Whether the run has a privacy mechanism at all (``privacy=none`` releases without accounting)."""
        return self.mechanism.unit != "none"

    @property
    def server_release(self) -> bool:
        """Whether the server noises the aggregate itself; the student then distills on the released targets."""
        return isinstance(self.mechanism, ServerRelease)

    def observe_reports(self, reports: Iterable[protocol.TeacherReport]) -> None:
        """With per-example privacy the clients account for themselves: keep the largest ε any of them reported."""
        if self.mechanism.unit == "example":
            self.client_epsilon = max(self.client_epsilon, *(t.epsilon for t in reports))

    def cap_budget(self, budget: int) -> int:
        """``budget``, or with a cap on a per-client ε the part of it that ε can still afford."""
        if self.plan.cap is not None and self.mechanism.unit == "client":
            return self._affordable(budget)
        return budget

    def _affordable(self, budget: int) -> int:
        """The most of ``budget`` queries whose worst-case cost keeps ε within the privacy cap (ε grows with the
        number of queries, so a bisection finds it)."""
        low, high = 0, budget
        while low < high:
            mid = (low + high + 1) // 2
            if self.ledger.epsilon_if(self.mechanism.query_rdp(self.plan, mid)) <= self.plan.cap:
                low = mid
            else:
                high = mid - 1
        return low

    def release(self, chosen: np.ndarray, inputs: AggregationInputs, aggregator: Aggregator,
                student: torch.nn.Module, x: torch.Tensor) -> dict:
        """Release noisy targets for the transfer points ``chosen`` (inputs on ``x``) and account for them;
        returns the mechanism's stats for metrics.jsonl."""
        self._check_sensitivity(inputs.clients)
        release = self.mechanism.release(self.plan, inputs, aggregator, student, x, self.noise_generator, self.rng)
        self.released.add(chosen[release.answered], release.targets)
        self.ledger.add(release.rdp, len(chosen), release.rdp_data_dependent)
        if release.smooth is not None:
            rdp, bounds = release.smooth
            self.smooth_rdp += rdp
            if len(bounds):
                self.smooth_bounds += np.pad(bounds, (0, len(self.smooth_bounds) - len(bounds)), mode="edge")
        return release.stats

    def account_client_noise(self, count: int) -> None:
        """Account for ``count`` queries the clients answered with their own noise (nothing for other mechanisms)."""
        if self.mechanism.client_noise:
            self.ledger.add(self.mechanism.query_rdp(self.plan, count), count)

    def _check_sensitivity(self, clients: tuple[int, ...]) -> None:
        """The server-side noise was calibrated for the aggregate of every client; fewer clients may make one
        client's influence larger than the noise covers, and the run must not release with too little noise."""
        planned = self.plan.sensitivity
        if planned is None:
            return
        actual = self.aggregator.sensitivity(self.cfg.privacy.clip, len(clients))
        if actual > planned + 1e-12:
            raise FederationError(
                f"privacy={self.cfg.privacy.name}: only {len(clients)} of {self.cfg.federation.num_clients} clients "
                f"answered, and the {self.cfg.aggregator.name} aggregate of {len(clients)} has sensitivity "
                f"{actual:.4g} > the {planned:.4g} the noise was calibrated for; the run stops rather than release "
                "under-noised targets (set federation.min_clients=federation.num_clients to stop at the first drop)")

    def smooth_sensitivity_columns(self, final: bool) -> dict:
        """The smooth-sensitivity release of the data-dependent ε (Papernot et al. 2018, Sec. 4.2, at the fixed
        order, classic conversion, every threshold check charged as it came out): its expected value, the std of
        its noise, and, at the end of the run only (``final``), the one noisy value that may be published."""
        p = self.cfg.privacy
        release = release_of(self.smooth_rdp, self.smooth_bounds, p.smooth_sensitivity_order,
                             p.smooth_sensitivity_beta, p.smooth_sensitivity_sigma, p.delta)
        out = {"order": release.order, "beta": release.beta, "sigma_ss": release.sigma_ss,
               "data_dependent_rdp": release.rdp, "smooth_sensitivity": release.smooth_sensitivity,
               "release_rdp": release.release_rdp, "epsilon_expected": release.epsilon,
               "noise_std": release.noise_std, "conversion": "classic", "threshold_charged": p.threshold_charge}
        if final:  # drawn once, from its own seeded generator: a second draw would be a second release
            out["epsilon_released"] = release.sanitized_epsilon(np.random.default_rng([self.cfg.seed, 11]))
        return out

    def columns(self, final: bool = False) -> dict:
        """``epsilon_spent`` and ``delta`` (None: no privacy, ε = ∞), and the mechanism's details; ``final``: the
        run's summary, which alone holds the smooth-sensitivity release's noisy ε."""
        if not self.active:
            return {"epsilon_spent": None, "delta": None, "privacy": {"mechanism": "none"}}
        p = self.cfg.privacy
        spent = self.client_epsilon if self.mechanism.unit == "example" else self.ledger.epsilon()
        details = {"mechanism": p.name, "unit": self.mechanism.unit,
                   "noise_multiplier": self.plan.noise_multiplier,
                   "planned_epsilon": self.plan.planned_epsilon, "cap": self.plan.cap,
                   "invocations": self.ledger.invocations}
        if self.plan.sensitivity is not None:
            details["sensitivity"] = self.plan.sensitivity
        if self.mechanism.data_dependent_accounting:
            details["epsilon_data_dependent"] = self.ledger.epsilon_data_dependent()
            details["epsilon_classic"], details["epsilon_data_dependent_classic"] = self.ledger.epsilon_classic()
            if getattr(p, "smooth_sensitivity", False):
                details["smooth_sensitivity"] = self.smooth_sensitivity_columns(final)
        if self.mechanism.unit == "example":
            details["client_noise_multipliers"] = self.plan.client_noise_multipliers
            del details["invocations"]  # DP-SGD steps are counted by each client's own accountant
        return {"epsilon_spent": spent, "delta": p.delta, "privacy": details}
