"""The run configuration's schema: composed by Hydra from conf/, validated once (``fedkd.validation``), passed
down as frozen dataclasses.

This module is the schema only: the run, federation and baselines sections, and the envelope of a component
section (the registered name that picks the component, and the base class of its parameters). It imports no
component: each registered component declares its own parameter dataclass (a subclass of a base here, with its
defaults and field rules) and, where it has cross-field rules, a ``check`` that receives the resolved run config.
Bad values raise one ``ConfigError`` naming the key and how to fix it, before any process starts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from fedkd.field_types import as_field_value, field_types, mismatch

ENGINES = ("simulation", "inprocess")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and a valid alternative."""


def fail(key: str, value: object, why: str) -> None:
    raise ConfigError(f"invalid config: {key} = {value!r}: {why}")


# ------------------------------------------------------------------------------------------- field rules
# A field's metadata says what values it takes; the generic validator applies them to every section.


def rule(holds: Callable[[Any], bool], why: str) -> dict:
    """A rule on one field: ``holds(value)`` must be true, else ``why`` completes the error."""
    return {"rule": (holds, why)}


def positive(hint: str = "") -> dict:
    return rule(lambda v: v > 0, "must be > 0" + hint)


def non_negative(hint: str = "") -> dict:
    return rule(lambda v: v >= 0, "must be >= 0" + hint)


def open_unit(hint: str = "") -> dict:
    return rule(lambda v: 0.0 < v < 1.0, "must lie strictly between 0 and 1" + hint)


def one_of(*choices: str) -> dict:
    return {"choices": choices}


def registered(kind: str) -> dict:
    """The field names an entry of another registry (``model``, ``source``, ``compression``)."""
    return {"registry": kind}


# ------------------------------------------------------------------------------ component section bases


@dataclass(frozen=True)
class ComponentConfig:
    """The envelope of a component section: ``name`` (``objective`` for teachers and students) picks the
    registered component, the other fields are its parameters."""

    def check(self, section: str, run: RunConfig, parts: Components) -> None:
        """Cross-field rules of the component, given the resolved run; the default has none."""


@dataclass(frozen=True)
class DatasetConfig(ComponentConfig):
    """What every benchmark has: its splits' sizes and where its files are; benchmarks add their own knobs."""

    name: str
    data_root: str = field(default="data", metadata=rule(
        lambda v: bool(v.strip()), "must name the folder of the datasets on disk (e.g. data)"))
    test_per_class: int = field(default=100, metadata=positive())  # test images per class, balanced
    # the server's labeled split: images per class (0: none; the methods that need it are refused)
    val_per_class: int = field(default=20, metadata=non_negative())
    # images per class held back for that split whatever its size (0: val_per_class), so that a labeled budget
    # changes neither the clients' shards nor the transfer pool (the split takes the first val_per_class of them)
    val_reserve_per_class: int = field(default=0, metadata=non_negative())
    transfer_fraction: float = field(default=0.25, metadata=open_unit())  # share of the training images made public
    # held_out: the transfer set is a part of the training images no client holds; pool: the transfer set is the
    # clients' pool itself, pool and transfer merged (AGRE-KD distils the student on the teachers' training set)
    transfer_from: str = field(default="held_out", metadata=one_of("held_out", "pool"))

    def check(self, section: str, run: RunConfig, parts: Components) -> None:
        if 0 < self.val_reserve_per_class < self.val_per_class:
            fail(f"{section}.val_reserve_per_class", self.val_reserve_per_class,
                 f"holds fewer images than {section}.val_per_class = {self.val_per_class} takes from it")


@dataclass(frozen=True)
class PartitionConfig(ComponentConfig):
    """IID needs only ``name``; partitioners with parameters extend it."""

    name: str
    repeats_examples: ClassVar[bool] = False  # whether an example can sit on several clients (no disjoint shards)


@dataclass(frozen=True)
class TrainingConfig(ComponentConfig):
    """What teachers and students share: objective, architecture and the SGD schedule. Values come from
    conf/teacher/*.yaml and conf/student/*.yaml."""

    objective: str
    arch: str = field(metadata=registered("model"))
    epochs: int = field(metadata=positive())
    lr: float = field(metadata=positive())
    momentum: float = field(metadata=rule(lambda v: 0.0 <= v < 1.0, "must lie in [0, 1)"))
    weight_decay: float = field(metadata=non_negative())
    batch_size: int = field(metadata=positive())
    pretrained_path: str  # state dict of the model's body (torchvision ResNet format) to start from; "" = none

    def check(self, section: str, run: RunConfig, parts: Components) -> None:
        if self.pretrained_path and not Path(self.pretrained_path).is_file():
            fail(f"{section}.pretrained_path", self.pretrained_path, "no such file; weights are never downloaded: "
                 "save a state dict there (e.g. torchvision's resnet18-f37072fd.pth) or leave it empty")


@dataclass(frozen=True)
class TeacherConfig(TrainingConfig):
    """A client's local training (epochs per round; the teacher keeps training across rounds)."""


@dataclass(frozen=True)
class StudentConfig(TrainingConfig):
    """The server's distillation (epochs over the transfer pool per round) at temperature τ, with the options
    every objective has: student DFR and model selection."""

    temperature: float = field(metadata=positive())
    min_steps: int = field(default=0, metadata=non_negative(" (0 = exactly student.epochs)"))
    dfr: bool = False  # retrain the student's last layer on the labeled server split after distillation
    dfr_holdout: float = field(default=0.5, metadata=open_unit())  # part of the split kept for choosing heads
    dfr_subsets: int = field(default=20, metadata=positive())  # group-balanced subsets whose heads are averaged
    # subsample: group-balanced subsets (the DFR authors'); weights: every example, groups weighted equally
    dfr_balance: str = field(default="weights", metadata=one_of("subsample", "weights"))
    select_best_round: bool = False  # keep the round with the best validation worst-group accuracy
    # the term on the transfer points without a target (fedkd.semi_supervised): none, virtual adversarial training
    # (Miyato et al. 2018), or VAT plus the entropy of the student's predictions (their VAT + EntMin)
    unlabeled: str = field(default="none", metadata=one_of("none", "vat", "vat_entropy"))
    unlabeled_weight: float = field(default=1.0, metadata=non_negative())  # α: the term's weight in the loss
    unlabeled_batch_size: int = field(default=128, metadata=positive())  # points drawn per step (the authors' 128)
    vat_epsilon: float = field(default=0.3, metadata=positive())  # ε: L2 norm of the virtual adversarial perturbation
    vat_xi: float = field(default=1e-6, metadata=positive())  # ξ: the finite-difference step of the power iteration
    vat_power_iterations: int = field(default=1, metadata=positive())  # K: power iterations per step


@dataclass(frozen=True)
class AggregatorConfig(ComponentConfig):
    """``name`` picks the aggregator; aggregators with parameters extend it."""

    name: str


@dataclass(frozen=True)
class QueryConfig(ComponentConfig):
    """Which transfer points are asked about each round, and how the soft labels travel back. A budget is a
    fraction of the transfer pool when <= 1 and a count of points when > 1."""

    whole_pool: ClassVar[bool] = False  # the strategy asks about every point every round (no budget)

    name: str
    per_round: float = 1.0  # b per round
    total: float = field(default=0.0, metadata=non_negative())  # cap on the points queried over the run; 0 = none
    requery: bool = False  # may a point be asked about again in a later round (fresh soft labels)
    compression: str = field(default="fp32", metadata=registered("compression"))  # uplink soft labels
    top_k: int = field(default=3, metadata=positive())  # compression=topk: probabilities kept per point

    def check(self, section: str, run: RunConfig, parts: Components) -> None:
        for key in ("per_round", "total"):
            value = getattr(self, key)
            if value < 0 or (key == "per_round" and value == 0):
                fail(f"{section}.{key}", value, "must be > 0: a fraction of the transfer pool (<= 1) or a count (> 1)")
            if value > 1 and value != int(value):
                fail(f"{section}.{key}", value, "a budget above 1 is a count of points and must be a whole number")

    def budget(self, value: float, pool_size: int) -> int:
        """A fraction or count (``per_round``/``total``) as a number of points of a pool of ``pool_size``."""
        return max(1, int(round(value * pool_size))) if value <= 1.0 else int(value)

    def round_budget(self, pool_size: int, num_queries: int, num_candidates: int) -> int:
        """Points to ask about this round: ``per_round`` (the whole pool for a whole-pool strategy), within what
        ``total`` leaves after ``num_queries`` and within the ``num_candidates`` still askable."""
        budget = num_candidates if self.whole_pool else self.budget(self.per_round, pool_size)
        if self.total > 0:
            budget = min(budget, self.budget(self.total, pool_size) - num_queries)
        return max(0, min(budget, num_candidates))

    def asks_again(self) -> bool:
        """Whether a point already queried is a candidate again (re-querying, or the whole pool every round)."""
        return self.requery or self.whole_pool

    def planned_queries(self, pool_size: int, num_rounds: int) -> int:
        """Soft-label vectors asked of each client over ``num_rounds`` (what a privacy budget must cover)."""
        asked = 0
        for _ in range(num_rounds):
            candidates = pool_size if self.asks_again() else pool_size - asked
            asked += self.round_budget(pool_size, asked, candidates)
        return asked


@dataclass(frozen=True)
class PrivacyConfig(ComponentConfig):
    """A ``privacy=`` setting (conf/privacy/); mechanisms with noise extend it."""

    name: str
    delta: float = field(default=1e-5, metadata=open_unit(" (and below 1/n; e.g. 1e-5)"))


@dataclass(frozen=True)
class ClientPrivacy:
    """The part of the privacy setting a client acts on (travels in the job): which client-side hooks the
    mechanism has (DP-SGD for its teacher, noise on its own soft labels, withholding exact statistics of its
    shard), and their parameters."""

    name: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip: float = 1.0
    num_rounds: int = 1  # dpsgd: rounds of local training the target ε covers
    temperature: float = 1.0  # local noise: the τ at which soft labels are clipped and noised
    count_noise: float = 0.0  # σ of the released class counts; 0 = the client sends none
    dp_sgd: bool = False  # train the teacher with DP-SGD
    noise_answers: bool = False  # noise every soft-label answer before it leaves the client
    withhold_statistics: bool = False  # send no exact statistic of the shard (class counts noised or zero)


# ------------------------------------------------------------------------------------- run-level sections


@dataclass(frozen=True)
class FederationConfig:
    """Values come from conf/federation/*.yaml."""

    num_clients: int = field(metadata=positive())
    num_rounds: int = field(metadata=positive())
    # CPUs per simulated client, and the torch threads every client uses on any engine
    client_cpus: float = field(metadata=positive())
    round_timeout: float = field(metadata=positive())  # seconds the server waits for the replies of one request
    # a round goes on with the clients that answered while at least this many did
    min_clients: int = field(metadata=positive())
    client_gpus: float = field(default=0.0, metadata=non_negative(
        " (a fraction shares one GPU between clients)"))  # GPUs Ray reserves per simulated client
    server_threads: int | None = field(default=None, metadata=positive())  # the server's torch threads (None: all)


@dataclass(frozen=True)
class BaselinesConfig:
    """References computed beside the federated run (conf/config.yaml, section ``baselines``)."""

    ensemble: bool
    server_only: bool
    server_only_cnn_steps: int = field(metadata=positive())
    centralized: bool


@dataclass(frozen=True)
class ClientJob:
    """What a client needs to rebuild its shard and train its teacher; travels in every request."""

    seed: int
    num_clients: int
    dataset: DatasetConfig
    partition: PartitionConfig
    teacher: TeacherConfig
    erm_base: bool = False  # keep an ERM base beside the teacher (the biased model AGRE-KD asks for)
    privacy: ClientPrivacy = ClientPrivacy()
    threads: int = 1  # torch threads of the client's work, on every engine (federation.client_cpus)
    device: str = "cpu"  # where the client's models run (the run's device, resolved by the client itself)

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=True)

    def training_key(self) -> str:
        """What determines how the client trains its teacher and what its train reply says: the whole job when
        it trains with DP-SGD or sends exact statistics; otherwise only that it withholds them (the noise of the
        other mechanisms acts on soft-label answers, or on the server)."""
        if self.privacy.dp_sgd or not self.privacy.withhold_statistics:
            return self.to_yaml()
        return dataclasses.replace(self, privacy=ClientPrivacy(name="withheld", withhold_statistics=True)).to_yaml()


@dataclass(frozen=True)
class RunConfig:
    seed: int
    name: str
    runs_dir: str
    dataset: DatasetConfig
    partition: PartitionConfig
    teacher: TeacherConfig
    aggregator: AggregatorConfig
    student: StudentConfig
    federation: FederationConfig
    baselines: BaselinesConfig
    query: QueryConfig
    privacy: PrivacyConfig = PrivacyConfig(name="none")
    engine: str = "simulation"  # simulation (Flower's engine, Ray) | inprocess (the same apps, no Ray)
    device: str = "cpu"  # auto | cpu | cuda | cuda:<index>, resolved in each process (fedkd.device)
    teacher_store_dir: str | None = None  # trained teachers shared with other runs (fedkd.teacher_store)
    logger: str = "none"  # none | tensorboard | mlflow (fedkd.trackers), written inside the run directory

    def client_job(self, privacy: ClientPrivacy | None = None, erm_base: bool = False) -> ClientJob:
        """The job every client gets; ``privacy`` is what the privacy mechanism asks of the clients."""
        return ClientJob(
            seed=self.seed,
            num_clients=self.federation.num_clients,
            dataset=self.dataset,
            partition=self.partition,
            teacher=self.teacher,
            erm_base=erm_base,
            privacy=privacy or ClientPrivacy(delta=self.privacy.delta),
            threads=max(1, int(round(self.federation.client_cpus))),
            device=self.device,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Components:
    """The registered components a run config names, resolved by the validator: what cross-field checks ask
    about (what an aggregator needs, which hooks a privacy mechanism has) instead of comparing names."""

    dataset: Any
    partition: Any
    teacher: Any
    aggregator: Any
    student: Any
    query: Any
    privacy: Any
    teacher_model: dict  # the traits the teacher's architecture was registered with
    student_model: dict


COMPONENT_SECTIONS = ("dataset", "partition", "teacher", "aggregator", "student", "query", "privacy")
RUN_SECTIONS = {"federation": FederationConfig, "baselines": BaselinesConfig}


def parse_section(section: str, raw: Any, cls: type, registries: dict[str, Any] | None = None) -> Any:
    """``raw`` as an instance of the dataclass ``cls``: every key known, every field present or defaulted, of
    its annotated type (``fedkd.field_types``), and within its rules (``registries`` resolve ``registered``
    fields). A field's rules judge a set value: ``None`` where the type allows it means "not set"."""
    if not isinstance(raw, dict):
        fail(section, raw, "must be a mapping; pick one of the files in conf/" + section)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            fail(f"{section}.{key}", raw[key], f"unknown key; known keys of {section}: {sorted(known)}")
    hints, values = field_types(cls), {}
    for f in dataclasses.fields(cls):
        key = f"{section}.{f.name}"
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                fail(key, None, f"missing; set it in conf/{section}/ or as {key}=...")
            continue
        value = raw[f.name]
        why = mismatch(value, hints[f.name])
        if why is not None:
            fail(key, value, why)
        values[f.name] = as_field_value(value, hints[f.name])
        if value is None:
            continue
        if "rule" in f.metadata:
            holds, why = f.metadata["rule"]
            if not holds(value):
                fail(key, value, why)
        if "choices" in f.metadata:
            check_choice(key, value, f.metadata["choices"])
        if "registry" in f.metadata and registries is not None:
            check_choice(key, value, registries[f.metadata["registry"]])
    return cls(**values)


def check_choice(key: str, value: str, choices: list[str] | tuple[str, ...] | dict) -> None:
    if value not in choices:
        fail(key, value, f"unknown name; choose one of {sorted(choices)} (e.g. {key}={sorted(choices)[0]})")
