"""The parameters of the noisy ``privacy=`` settings (conf/privacy/), one frozen dataclass each, and the
cross-field rules that decide before a run whether a setting composes with the rest of the config (partition,
aggregator, query strategy, student objective, teacher). The mechanisms that use them are in ``fedkd.privacy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedkd.config import Components, PrivacyConfig, RunConfig, fail, non_negative, one_of, positive


@dataclass(frozen=True)
class NoisyPrivacyConfig(PrivacyConfig):
    """Give a target ``epsilon`` for the whole run (σ calibrated from it), or ``noise_multiplier`` σ (ε
    reported), or both (σ as given, ``epsilon`` a cap the run stops at)."""

    epsilon: float | None = None  # target ε for the whole run (all rounds, all queries)
    noise_multiplier: float | None = None  # σ: noise std / sensitivity (gnmax: std of the vote noise)

    def check(self, section: str, run: RunConfig, parts: Components) -> None:
        if run.partition.repeats_examples:
            fail("partition.name", run.partition.name, f"privacy={self.name} protects an example held by one "
                 "client; this partition gives every client the same examples: use partition=iid or dirichlet")
        if self.epsilon is None and self.noise_multiplier is None:
            fail(f"{section}.epsilon", None, f"privacy={self.name} needs a target privacy.epsilon (σ is calibrated "
                 "from it) or a privacy.noise_multiplier")
        if self.epsilon is not None and not self.epsilon > 0:
            fail(f"{section}.epsilon", self.epsilon, "must be a finite number > 0 (for no privacy use privacy=none)")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            fail(f"{section}.noise_multiplier", self.noise_multiplier, "must be > 0")
        if parts.query.needs_teacher_error or parts.student.needs_val_softlabels:
            key, value = (("query.name", run.query.name) if parts.query.needs_teacher_error
                          else ("student.objective", run.student.objective))
            fail(key, value, f"needs the teachers' soft labels on the server's labeled split every round, a release "
                 f"privacy={self.name} does not account for; use a query strategy and a student objective that "
                 "do not (e.g. query=random, student=kd)")
        if parts.aggregator.needs_class_counts(run.aggregator) and parts.privacy.unit == "client":
            fail("aggregator.name", run.aggregator.name, f"this aggregator reads the clients' class counts, whose "
                 f"sensitivity to replacing a client is unbounded under client-level privacy={self.name}: use an "
                 "aggregator that reads none (e.g. aggregator=mean)")


@dataclass(frozen=True)
class GaussianPrivacyConfig(NoisyPrivacyConfig):
    clip: float = field(default=1.0, metadata=positive())  # c: L2 bound of a soft-label vector or a gradient


@dataclass(frozen=True)
class DpSgdConfig(GaussianPrivacyConfig):
    # σ of the noisy class counts a client sends when the aggregator needs them
    count_noise: float = field(default=0.0, metadata=non_negative())

    def check(self, section: str, run: RunConfig, parts: Components) -> None:
        super().check(section, run, parts)
        if parts.teacher_model.get("batch_norm"):
            fail("teacher.arch", run.teacher.arch, "privacy=dpsgd: Opacus computes no per-sample gradients through "
                 "the BatchNorm layers of this model; use teacher.arch=cnn or mlp")
        if not parts.teacher.covered_by_dpsgd(run.teacher):
            fail("teacher.objective", run.teacher.objective, "privacy=dpsgd trains teachers with Opacus DP-SGD on "
                 "cross-entropy; this objective uses the shard in ways DP-SGD does not cover: use teacher=erm, "
                 "or teacher=dfr with teacher.dfr_data=public")
        if parts.aggregator.needs_class_counts(run.aggregator):
            if not self.count_noise > 0:
                fail(f"{section}.count_noise", self.count_noise, f"aggregator={run.aggregator.name} reads the "
                     "clients' class counts: under privacy=dpsgd they are released with Gaussian noise, so set "
                     "privacy.count_noise > 0")
            if self.epsilon is not None and self.noise_multiplier is None:
                fail(f"{section}.noise_multiplier", None, "with noisy class counts the DP-SGD noise is not calibrated "
                     "from a target ε here: give privacy.noise_multiplier (ε is then reported, counts included)")


@dataclass(frozen=True)
class GNMaxConfig(NoisyPrivacyConfig):
    threshold: float | None = None  # T: answer only when the top vote count + N(0, σ1²) reaches it (None: plain GNMax)
    threshold_sigma: float | None = None  # σ1 of the threshold check
    # the smooth-sensitivity release of the data-dependent ε (Papernot et al. 2018, Sec. 4.2): its fixed order λ,
    # smoothness β and noise σ_ss, all three or none (none: that ε is reported, not releasable)
    smooth_sensitivity_order: float | None = None
    smooth_sensitivity_beta: float | None = None
    smooth_sensitivity_sigma: float | None = None
    # the data-dependent ε's charge for the answers behind the threshold: realised (each answer given) or expected
    # (Pr[answered] x its cost, on every query; the authors' Table 2, rdp_cumulative.py and smooth_sensitivity_table.py)
    threshold_charge: str = field(default="realised", metadata=one_of("realised", "expected"))

    @property
    def smooth_sensitivity(self) -> bool:
        return self.smooth_sensitivity_order is not None

    def check(self, section: str, run: RunConfig, parts: Components) -> None:
        if not parts.aggregator.plurality_vote:
            fail("aggregator.name", run.aggregator.name, "privacy=gnmax releases the noisy argmax of the teachers' "
                 "votes; it replaces the aggregator: use aggregator=vote (a weighted vote has no bounded "
                 "sensitivity)")
        super().check(section, run, parts)
        self._check_smooth_sensitivity(section)
        if self.threshold is None:
            if self.threshold_charge == "expected":
                fail(f"{section}.threshold_charge", "expected", "charges the answers by their chance of passing the "
                     "threshold check, and privacy.threshold is null (plain GNMax answers every query)")
            if self.threshold_sigma is not None:
                fail(f"{section}.threshold_sigma", self.threshold_sigma, "σ1 is the noise of confident GNMax's "
                     "threshold check, and privacy.threshold is null (plain GNMax): set privacy.threshold too, or "
                     "leave privacy.threshold_sigma null")
            return
        teachers = run.federation.num_clients
        if not self.threshold > 0:
            fail(f"{section}.threshold", self.threshold, "must be > 0 (leave it null for plain GNMax, which answers "
                 "every query)")
        if self.threshold > teachers:
            fail(f"{section}.threshold", self.threshold, f"is above the number of teachers "
                 f"(federation.num_clients={teachers}), the largest a top vote count can be: the check would refuse "
                 f"nearly every query; choose a threshold ≤ {teachers} (PATE on MNIST: 200 of 250 teachers)")
        if self.threshold_sigma is None or not self.threshold_sigma > 0:
            fail(f"{section}.threshold_sigma", self.threshold_sigma, "confident GNMax (privacy.threshold set) needs "
                 "the noise of its threshold check, σ1 > 0")
        if self.noise_multiplier is None:
            fail(f"{section}.noise_multiplier", None, "confident GNMax is not calibrated from a target ε here: give σ "
                 "(privacy.noise_multiplier) and σ1 (privacy.threshold_sigma); privacy.epsilon then caps the run")

    def _check_smooth_sensitivity(self, section: str) -> None:
        values = {"order": self.smooth_sensitivity_order, "beta": self.smooth_sensitivity_beta,
                  "sigma": self.smooth_sensitivity_sigma}
        missing = [k for k, v in values.items() if v is None]
        if len(missing) == len(values):
            return
        if missing:
            fail(f"{section}.smooth_sensitivity_{missing[0]}", None, "the smooth-sensitivity release needs its order "
                 "λ, smoothness β and noise σ_ss together (privacy.smooth_sensitivity_order, _beta, _sigma), or "
                 "none of them")
        if self.noise_multiplier is None:
            fail(f"{section}.noise_multiplier", None, "the smooth-sensitivity release is computed at the vote noise σ: "
                 "give privacy.noise_multiplier")
        from fedkd.smooth_sensitivity import smooth_sensitivity_gaussian_rdp  # scipy.optimize: not in every client

        try:
            smooth_sensitivity_gaussian_rdp(self.smooth_sensitivity_beta, self.smooth_sensitivity_sigma,
                                            self.smooth_sensitivity_order)
        except ValueError as err:
            fail(f"{section}.smooth_sensitivity_beta", self.smooth_sensitivity_beta, str(err))
