"""Local teacher objectives (clients), behind a registry: a new objective is one class here plus one YAML
file in conf/teacher/.

A client holds a ``TeacherModels`` pair: the teacher it distills from and, when the server's aggregator needs
a biased reference (AGRE-KD), its ERM base. For ``erm`` the teacher is its own base; ``dfr`` builds the teacher
from its base; the other objectives train a separate ERM base only when asked.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedkd.config import ClientPrivacy, TeacherConfig, one_of, open_unit, positive
from fedkd.data import Split
from fedkd.device import model_device
from fedkd.dfr import DFR_BALANCING, deep_feature_reweighting, held_out_split
from fedkd.registry import Registry
from fedkd.training import epoch_orders, run_epochs, sgd

TEACHER_OBJECTIVES = Registry("teacher objective", section="teacher", key="objective", params=TeacherConfig)
DPSGD_HISTORY = "dpsgd_history"  # Opacus RDP accountant history [k, 3]: (noise multiplier, sample rate, steps)


@dataclass
class TeacherModels:
    """The model a client distills from, and its ERM base (None when not kept; the teacher itself for erm)."""

    teacher: nn.Module
    base: nn.Module | None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # objective state kept across rounds


class TeacherObjective(ABC):
    """The loss a client minimises on its shard; may hold state across minibatches (e.g. group weights)."""

    # whether ``keep_base`` changes what ``fit`` trains (a separate ERM base); False where the base comes anyway
    base_on_request: bool = True
    # whether DP-SGD (cross-entropy through Opacus) trains exactly this objective, so that privacy=dpsgd covers it
    dpsgd_compatible: ClassVar[bool] = False

    @classmethod
    def covered_by_dpsgd(cls, cfg: TeacherConfig) -> bool:
        """Whether privacy=dpsgd covers everything this objective, so configured, does with the shard."""
        return cls.dpsgd_compatible

    @classmethod
    def uses_labeled_split(cls, cfg: TeacherConfig) -> bool:
        """Whether this objective, so configured, trains on the server's public labeled split."""
        return False

    @classmethod
    def refits_an_erm_base(cls, cfg: TeacherConfig) -> bool:
        """Whether this objective, so configured, trains its base exactly as ERM trains its teacher and then
        refits only the head, on public data (``fit_on_trained_base``): its base can be an ERM job's teacher."""
        return False

    def __init__(self, shard: Split, num_classes: int, num_groups: int, cfg: TeacherConfig,
                 public: Split | None = None) -> None:
        self.cfg = cfg
        self.public = public  # the server's public labeled split (with groups), which every node can build

    @abstractmethod
    def loss(self, logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one minibatch."""

    def fit_private(self, models: TeacherModels, shard: Split, privacy: ClientPrivacy,
                    generator: np.random.Generator) -> float:
        """One round under privacy=dpsgd: DP-SGD on cross-entropy (``fit_dpsgd``); the teacher is its own base."""
        return fit_dpsgd(models, shard, self.cfg, privacy)

    def fit(self, models: TeacherModels, shard: Split, keep_base: bool, generator: np.random.Generator,
            new_model: Callable[[], nn.Module]) -> float:
        """One round of local training: the teacher with this objective, and an ERM base when one is kept."""
        loss = fit_on(models.teacher, shard, self.loss, self.cfg, generator)
        if keep_base:
            if models.base is None:
                models.base = new_model()
            erm = ERM(shard, 0, 0, self.cfg)
            fit_on(models.base, shard, erm.loss, self.cfg, generator)
        return loss


def fit_on(model: nn.Module, shard: Split, loss_fn: Callable, cfg: TeacherConfig,
           generator: np.random.Generator, epoch_end: Callable[[], None] | None = None) -> float:
    """``cfg.epochs`` epochs of SGD on ``loss_fn(logits, y, g)`` (``epoch_end`` called after each); returns the
    last epoch's mean loss."""
    optimizer = sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    device = model_device(model)
    x, y, g = (torch.from_numpy(a).to(device) for a in (shard.x, shard.y, shard.g))

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        return loss_fn(model(x[idx]), y[idx], g[idx])

    return run_epochs(model, optimizer, len(shard), batch_loss, cfg.epochs, cfg.batch_size, generator, epoch_end)


@TEACHER_OBJECTIVES.register("erm")
class ERM(TeacherObjective):
    """Empirical risk minimisation: mean cross-entropy. The teacher is its own ERM base, always kept."""

    base_on_request = False
    dpsgd_compatible = True

    def loss(self, logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def fit(self, models: TeacherModels, shard: Split, keep_base: bool, generator: np.random.Generator,
            new_model: Callable[[], nn.Module]) -> float:
        loss = fit_on(models.teacher, shard, self.loss, self.cfg, generator)
        models.base = models.teacher
        return loss


def class_priors(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Laplace-smoothed class frequencies (n_c + 1) / (n + C): a class a client never saw keeps a finite log."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return (counts + 1.0) / (counts.sum() + num_classes)


@dataclass(frozen=True)
class LogitAdjustedConfig(TeacherConfig):
    la_tau: float = field(default=1.0, metadata=positive())  # strength of the logit adjustment


@TEACHER_OBJECTIVES.register("balanced", params=LogitAdjustedConfig)
class LogitAdjusted(TeacherObjective):
    """Logit-adjusted loss (Menon et al. 2021, "Long-tail learning via logit adjustment", Eq. 11):
    CE(y, z + τ_la · log π) with π the client's own class priors, so that the unadjusted logits z used at
    prediction time are balanced across classes. METHODS.md "balanced"."""

    def __init__(self, shard: Split, num_classes: int, num_groups: int, cfg: TeacherConfig,
                 public: Split | None = None) -> None:
        super().__init__(shard, num_classes, num_groups, cfg, public)
        priors = class_priors(shard.y, num_classes)
        self.shift = torch.tensor(cfg.la_tau * np.log(priors), dtype=torch.float32)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.shift.to(logits.device), y)


@dataclass(frozen=True)
class GroupDroConfig(TeacherConfig):
    dro_eta: float = field(default=0.01, metadata=positive())  # step size of the group weights


@TEACHER_OBJECTIVES.register("group_dro", params=GroupDroConfig)
class GroupDRO(TeacherObjective):
    """Online group DRO (Sagawa et al. 2020, Algorithm 1), on the client's local groups: after each minibatch
    q_g ← q_g · exp(η · loss_g), q normalised, and the step minimises Σ_g q_g · loss_g, loss_g the mean loss of
    group g in the batch (0 for a group absent from the batch, as in the authors' code). q persists across
    rounds in the client's state."""

    def __init__(self, shard: Split, num_classes: int, num_groups: int, cfg: TeacherConfig,
                 public: Split | None = None) -> None:
        super().__init__(shard, num_classes, num_groups, cfg, public)
        self.num_groups = num_groups
        self.q = torch.full((num_groups,), 1.0 / num_groups)

    def group_losses(self, logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        per_example = F.cross_entropy(logits, y, reduction="none")
        sums = torch.zeros(self.num_groups, device=logits.device).index_add(0, g, per_example)
        counts = torch.zeros(self.num_groups, device=logits.device).index_add(0, g, torch.ones_like(per_example))
        return sums / counts.clamp(min=1.0)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        group_loss = self.group_losses(logits, y, g)
        self.q = self.q.to(logits.device)
        with torch.no_grad():
            self.q = self.q * torch.exp(self.cfg.dro_eta * group_loss.detach())
            self.q = self.q / self.q.sum()
        return (self.q * group_loss).sum()

    def fit(self, models: TeacherModels, shard: Split, keep_base: bool, generator: np.random.Generator,
            new_model: Callable[[], nn.Module]) -> float:
        self.q = models.extra.get("dro_q", self.q)
        loss = super().fit(models, shard, keep_base, generator, new_model)
        models.extra["dro_q"] = self.q.cpu()
        return loss


@dataclass(frozen=True)
class DfrTeacherConfig(TeacherConfig):
    # public: the head is refitted on the server's public labeled split (AGRE-KD's DFR teachers); local: on a
    # held-out part of the client's own shard
    dfr_data: str = field(default="public", metadata=one_of("public", "local"))
    dfr_holdout: float = field(default=0.2, metadata=open_unit())  # local: fraction of the shard held out
    # group-balanced subsets whose refitted heads are averaged (the DFR authors' num_retrains)
    dfr_subsets: int = field(default=20, metadata=positive())
    # subsample: group-balanced subsets (the DFR authors'); weights: every example, groups weighted equally
    dfr_balance: str = field(default="weights", metadata=one_of(*DFR_BALANCING))


@TEACHER_OBJECTIVES.register("dfr", params=DfrTeacherConfig)
class DFR(ERM):
    """DFR teacher (Kirichenko et al. 2022): an ERM base, then a copy whose last layer is refitted on
    group-annotated data the base did not train on, as the DFR authors fit it (``fedkd.dfr.
    deep_feature_reweighting``: L1 logistic regression on standardised features, C chosen by worst-group accuracy
    on halves, heads averaged over group-balanced subsets). ``dfr_data=public`` as AGRE-KD does it (Kenfack et
    al., Sec. 4): the base trains on the whole shard, the head on the server's public labeled split.
    ``dfr_data=local``: the base trains on the shard minus a held-out part and the head on that part, for a
    client that has no public labeled data. The features are standardised with the statistics of the data the head
    is refitted on (public) or of the data the base trained on (local, as the authors do); the public variant does
    not standardise on the shard, so that with DP-SGD the head stays post-processing. ``dfr_balance``: the
    authors' group-balanced subsets, or (the default) every example with the groups weighted equally. The base is
    kept: it is the biased model AGRE-KD needs (METHODS.md "dfr")."""

    @classmethod
    def uses_labeled_split(cls, cfg: TeacherConfig) -> bool:
        return cfg.dfr_data == "public"

    @classmethod
    def covered_by_dpsgd(cls, cfg: TeacherConfig) -> bool:
        """The public variant refits the head on public data only, its standardisation included: post-processing
        of the DP-SGD base."""
        return cfg.dfr_data == "public"

    @classmethod
    def refits_an_erm_base(cls, cfg: TeacherConfig) -> bool:
        return cfg.dfr_data == "public"

    def fit_private(self, models: TeacherModels, shard: Split, privacy: ClientPrivacy,
                    generator: np.random.Generator) -> float:
        """DP-SGD trains the base (which the last round's teacher is not: its head was refitted), then the head is
        refitted on the public split as without privacy; the client's ε is the base's."""
        if models.base is not None:
            models.teacher = models.base
        loss = fit_dpsgd(models, shard, self.cfg, privacy)
        self._refit_head(models, self._public(), self._public(), generator)
        return loss

    def _public(self) -> Split:
        if self.public is None:
            raise ValueError("teacher.dfr_data=public needs the server's public labeled split")
        return self.public

    def _refit_head(self, models: TeacherModels, labeled: Split, train: Split,
                    generator: np.random.Generator) -> None:
        models.teacher = copy.deepcopy(models.base)
        c = deep_feature_reweighting(models.teacher, labeled, train, self.cfg.dfr_subsets, generator,
                                     balance=self.cfg.dfr_balance)
        models.extra["dfr_c"] = torch.tensor(c)

    def fit(self, models: TeacherModels, shard: Split, keep_base: bool, generator: np.random.Generator,
            new_model: Callable[[], nn.Module]) -> float:
        if models.base is None:
            models.base = new_model()
        if self.cfg.dfr_data == "local":
            train_part, held_out = held_out_split(shard, self.cfg.dfr_holdout)
            loss = fit_on(models.base, train_part, self.loss, self.cfg, generator)
            self._refit_head(models, held_out, train_part, generator)
            return loss
        public = self._public()
        loss = fit_on(models.base, shard, self.loss, self.cfg, generator)
        self._refit_head(models, public, public, generator)
        return loss

    def fit_on_trained_base(self, models: TeacherModels, shard: Split, base_loss: float,
                            generator: np.random.Generator) -> float:
        """``fit`` on public data with ``models.base`` already trained this round (its ERM twin's teacher, which
        ``fit`` would train bit for bit: the same shard, initialisation, loss, schedule and data order): the
        generator drawn past the base's epochs as ``fit_on`` draws them, then the head refitted, so the teacher is
        ``fit``'s. Returns the base's training loss."""
        deque(epoch_orders(generator, len(shard), self.cfg.epochs), maxlen=0)  # drawn, not kept
        public = self._public()
        self._refit_head(models, public, public, generator)
        return base_loss


def fit_dpsgd(models: TeacherModels, shard: Split, cfg: TeacherConfig, privacy: ClientPrivacy) -> float:
    """One round of DP-SGD on cross-entropy (Abadi et al. 2016) through Opacus: Poisson-sampled minibatches of
    expected size ``cfg.batch_size``, per-sample gradients clipped to ``privacy.clip``, Gaussian noise σ·clip. σ is
    the client's (given, or calibrated for its target ε over all rounds); Opacus' RDP accountant continues from
    the history kept in ``models.extra`` (the client's ε is computed from it). The teacher is its own ERM base
    (DP-SGD teachers are ERM)."""
    from opacus import PrivacyEngine

    from fedkd.accounting import dpsgd_noise_multiplier

    sigma = dpsgd_noise_multiplier(privacy, len(shard), cfg.epochs, cfg.batch_size)
    engine = PrivacyEngine(accountant="rdp")
    history = models.extra.get(DPSGD_HISTORY)
    if history is not None:
        engine.accountant.history = [(float(s), float(q), int(n)) for s, q, n in history.tolist()]
    loader = DataLoader(TensorDataset(torch.from_numpy(shard.x), torch.from_numpy(shard.y)),
                        batch_size=cfg.batch_size)
    model = models.teacher
    private_model, optimizer, private_loader = engine.make_private(
        module=model, optimizer=sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay), data_loader=loader,
        noise_multiplier=sigma, max_grad_norm=privacy.clip, poisson_sampling=True)
    private_model.train()
    device = model_device(model)
    last = 0.0
    for _ in range(cfg.epochs):
        losses = []
        for xb, yb in private_loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(private_model(xb), yb) if len(xb) else private_model(xb).sum()
            loss.backward()
            optimizer.step()
            if len(xb):
                losses.append(loss.item())
        last = float(np.mean(losses)) if losses else last
    private_model._close()
    models.base = models.teacher
    models.extra[DPSGD_HISTORY] = torch.tensor(engine.accountant.history, dtype=torch.float64)
    return last


def as_objective(cfg: TeacherConfig, objective: str, **changes: object) -> TeacherConfig:
    """``cfg``'s settings (SGD schedule included) as ``objective``'s parameters, with ``changes``."""
    params = TEACHER_OBJECTIVES.params(objective)
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(params) if hasattr(cfg, f.name)}
    return params(**{**shared, "objective": objective, **changes})


def train_teacher(models: TeacherModels, shard: Split, num_classes: int, num_groups: int, cfg: TeacherConfig,
                  keep_base: bool, generator: np.random.Generator, new_model: Callable[[], nn.Module],
                  privacy: ClientPrivacy | None = None, public: Split | None = None) -> float:
    """One round of the configured objective on the shard (with DP-SGD under ``privacy=dpsgd``), ``public``
    the server's labeled split for objectives that use it; returns the last epoch's mean loss."""
    objective = TEACHER_OBJECTIVES[cfg.objective](shard, num_classes, num_groups, cfg, public)
    if privacy is not None and privacy.dp_sgd:
        return objective.fit_private(models, shard, privacy, generator)
    return objective.fit(models, shard, keep_base, generator, new_model)


def refit_on_trained_base(models: TeacherModels, shard: Split, num_classes: int, num_groups: int,
                          cfg: TeacherConfig, base_loss: float, generator: np.random.Generator,
                          public: Split) -> float:
    """One round of a DFR teacher on public data whose ERM base this round is already trained, in
    ``models.base`` (``DFR.fit_on_trained_base``); the same teacher ``train_teacher`` gives."""
    objective = TEACHER_OBJECTIVES[cfg.objective](shard, num_classes, num_groups, cfg, public)
    return objective.fit_on_trained_base(models, shard, base_loss, generator)
