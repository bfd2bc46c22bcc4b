"""Typed run configuration: composed by Hydra from conf/, validated once, passed down as frozen dataclasses.

Bad values raise one ``ConfigError`` naming the key and how to fix it, before any process starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedkd.conf_dir import CONF_DIR

ENGINES = ("simulation", "inprocess")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and a valid alternative."""


@dataclass(frozen=True)
class DatasetConfig:
    """One class for all benchmarks; a field a benchmark's YAML does not set keeps this default and is unused."""

    name: str
    source: str = "mnist5k"
    bias_ratio: float = 0.99
    group_by: str = "digit_alignment"
    color_std: float = 0.05
    imbalance: float = 10.0
    test_per_class: int = 100
    val_per_class: int = 20
    transfer_fraction: float = 0.25
    data_root: str = "data"  # folder of the real datasets on disk (relative to each process's working directory)
    image_size: int = 64  # waterbirds, celeba: side of the square RGB inputs
    max_examples: int = 0  # waterbirds, celeba: at most this many official training images (seeded draw); 0 = all


@dataclass(frozen=True)
class PartitionConfig:
    """IID needs only ``name``; the other fields are the Dirichlet partitioner's."""

    name: str
    by: str = "label"
    alpha: float = 0.5
    min_partition_size: int = 10
    self_balancing: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    """What teachers and students share: objective, architecture and the SGD schedule. Values come from
    conf/teacher/*.yaml and conf/student/*.yaml (the single source of defaults)."""

    objective: str
    arch: str
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int


@dataclass(frozen=True)
class TeacherConfig(TrainingConfig):
    """A client's local training (epochs per round; the teacher keeps training across rounds). The fields with
    defaults belong to one objective each and are set in its YAML file."""

    la_tau: float = 1.0  # balanced: strength of the logit adjustment
    dro_eta: float = 0.01  # group_dro: step size of the group weights
    dfr_holdout: float = 0.2  # dfr: fraction of the shard held out for last-layer retraining
    dfr_subsets: int = 5  # dfr: group-balanced subsets whose refitted heads are averaged
    dfr_steps: int = 200  # dfr: full-batch steps per subset
    dfr_lr: float = 0.01
    dfr_l2: float = 0.001
    pretrained_path: str = ""  # state dict of the model's body (torchvision ResNet format) to start from; "" = none


@dataclass(frozen=True)
class AggregatorConfig:
    """``name`` picks the aggregator; the other fields belong to one aggregator each (set in its YAML)."""

    name: str
    era_temperature: float = 0.1  # entropy_reduction: sharpening temperature T < 1 (DS-FL)
    biased: str = "random_client"  # agre: random_client | fixed_client | mean_bases
    biased_client: int = 0  # agre: the client whose ERM base is biased, with biased=fixed_client
    gradient: str = "last_layer"  # agre: last_layer (closed form) | per_sample (torch.func)
    param_set: str = "head"  # agre, per_sample: head | all
    normalize: bool = True  # agre: cosine of gradients (the paper) or raw inner product (its ablation)
    granularity: str = "example"  # agre: example (the paper) | batch
    degenerate: str = "uniform"  # agre: all weights of a point vanish -> uniform | floor
    floor_eps: float = 0.01  # agre, degenerate=floor: the smallest weight
    prior_correction: bool = False  # agre: shift logits by log pi_global - log pi_client before weighting
    with_support: bool = False  # agre: multiply the weights by the support weights


@dataclass(frozen=True)
class StudentConfig(TrainingConfig):
    """The server's distillation (epochs over the transfer pool per round) at temperature τ. The fields with
    defaults belong to one objective or option each."""

    temperature: float
    min_steps: int = 0  # at least this many minibatch steps per round (whole epochs over a small queried pool)
    beta: float = 0.5  # robust_kd: trade-off between average (0) and worst-class (1) risk
    robust_eta: float = 0.1  # robust_kd: exponentiated-gradient step on the class weights
    robust_period: int = 10  # robust_kd: minibatch steps between class-weight updates
    soften_power: float = 1.0  # softened: alpha_y = reliability_y ** soften_power
    labeled_weight: float = 1.0  # softened: weight of the labeled server-split term
    dfr: bool = False  # retrain the student's last layer on the labeled server split after distillation
    dfr_holdout: float = 0.5  # fraction of the server split kept for choosing between DFR and distilled heads
    dfr_subsets: int = 5
    dfr_steps: int = 200
    dfr_lr: float = 0.01
    dfr_l2: float = 0.001
    select_best_round: bool = False  # keep the round with the best validation worst-group accuracy
    pretrained_path: str = ""  # state dict of the model's body (torchvision ResNet format) to start from; "" = none


@dataclass(frozen=True)
class QueryConfig:
    """Which transfer points are asked about each round, and how the soft labels travel back (issue 4).
    A budget is a fraction of the transfer pool when <= 1 and a count of points when > 1."""

    name: str
    per_round: float = 1.0  # b per round (query=all: the whole pool, must stay 1)
    total: float = 0.0  # cap on the points queried over the whole run; 0 = no cap
    requery: bool = False  # may a point be asked about again in a later round (fresh soft labels)
    rad_min_gain: float = 0.001  # rad: floor of the gain 1 - margin, so 1/g stays finite
    compression: str = "fp32"  # uplink soft labels: fp32 | fp16 | topk | int8
    top_k: int = 3  # compression=topk: probabilities kept per point (the rest restored as 0)

    def budget(self, value: float, pool_size: int) -> int:
        """A fraction or count (``per_round``/``total``) as a number of points of a pool of ``pool_size``."""
        return max(1, int(round(value * pool_size))) if value <= 1.0 else int(value)

    def round_budget(self, pool_size: int, num_queries: int, num_candidates: int) -> int:
        """Points to ask about this round: ``per_round`` (the whole pool for ``all``), within what ``total``
        leaves after ``num_queries`` and within the ``num_candidates`` still askable."""
        budget = num_candidates if self.name == "all" else self.budget(self.per_round, pool_size)
        if self.total > 0:
            budget = min(budget, self.budget(self.total, pool_size) - num_queries)
        return max(0, min(budget, num_candidates))

    def planned_queries(self, pool_size: int, num_rounds: int) -> int:
        """Soft-label vectors asked of each client over ``num_rounds`` (what a privacy budget must cover)."""
        asked = 0
        for _ in range(num_rounds):
            candidates = pool_size if self.requery or self.name == "all" else pool_size - asked
            asked += self.round_budget(pool_size, asked, candidates)
        return asked


@dataclass(frozen=True)
class PrivacyConfig:
    """A ``privacy=`` setting (issue 5; conf/privacy/). Give a target ``epsilon`` for the whole run (σ calibrated
    from it), or ``noise_multiplier`` σ (ε reported), or both (σ as given, ``epsilon`` a cap the run stops at)."""

    name: str
    epsilon: float | None = None  # target ε for the whole run (all rounds, all queries)
    delta: float = 1e-5
    noise_multiplier: float | None = None  # σ: noise std / sensitivity (gnmax: std of the vote noise)
    clip: float = 1.0  # c: L2 bound of a client's soft-label vector; dpsgd: of a per-sample gradient
    threshold: float = 0.0  # gnmax: confident-GNMax threshold T on the top vote count (0 = plain GNMax)
    threshold_sigma: float = 0.0  # gnmax: σ1 of the threshold check
    count_noise: float = 0.0  # dpsgd: σ of the noisy class counts a client sends when the aggregator needs them

    def unit_is_client(self) -> bool:
        """Client-level guarantee (replacing a whole client) rather than example-level (dpsgd)."""
        return self.name in ("central_gaussian", "local_gaussian", "gnmax")


@dataclass(frozen=True)
class ClientPrivacy:
    """The part of the privacy setting a client acts on (travels in the job): DP-SGD for its teacher, noise on
    its own soft labels, noise on the class counts it sends; under any ``name`` but "none" it sends no exact
    statistic of its shard."""

    name: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip: float = 1.0
    num_rounds: int = 1  # dpsgd: rounds of local training the target ε covers
    temperature: float = 1.0  # local_gaussian: the τ at which soft labels are clipped and noised
    count_noise: float = 0.0  # σ of the released class counts; 0 = the client sends none


@dataclass(frozen=True)
class FederationConfig:
    """Values come from conf/federation/*.yaml."""

    num_clients: int
    num_rounds: int
    client_cpus: float  # CPUs per simulated client, and the torch threads every client uses on any engine
    round_timeout: float  # seconds the server waits for the replies of one request
    min_clients: int  # a round goes on with the clients that answered while at least this many did
    client_gpus: float = 0.0  # GPUs (a fraction shares one) Ray reserves per simulated client


@dataclass(frozen=True)
class BaselinesConfig:
    """References computed beside the federated run (conf/config.yaml, section ``baselines``)."""

    ensemble: bool
    one_hot: bool
    one_hot_epochs: int
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
        """What determines how the client trains its teacher and what its train reply says: the whole job under
        DP-SGD; under the other privacy settings only that the client withholds its counts (their noise acts on
        soft-label answers, or on the server)."""
        if self.privacy.name in ("none", "dpsgd"):
            return self.to_yaml()
        return dataclasses.replace(self, privacy=ClientPrivacy(name="withheld")).to_yaml()

    @classmethod
    def from_yaml(cls, text: str) -> ClientJob:
        raw = yaml.safe_load(text)
        return cls(
            seed=int(raw["seed"]),
            num_clients=int(raw["num_clients"]),
            dataset=DatasetConfig(**raw["dataset"]),
            partition=PartitionConfig(**raw["partition"]),
            teacher=TeacherConfig(**raw["teacher"]),
            erm_base=bool(raw["erm_base"]),
            privacy=ClientPrivacy(**raw.get("privacy", {})),
            threads=int(raw.get("threads", 1)),
            device=str(raw.get("device", "cpu")),
        )


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

    def client_job(self, erm_base: bool = False, release_counts: bool = False,
                   noise_multiplier: float | None = None) -> ClientJob:
        """The job every client gets; ``noise_multiplier`` is the σ the server calibrated (local_gaussian),
        ``release_counts`` whether the aggregator needs the clients' class counts."""
        p = self.privacy
        privacy = ClientPrivacy(name=p.name, delta=p.delta)
        if p.name in ("dpsgd", "local_gaussian"):
            privacy = ClientPrivacy(
                name=p.name, epsilon=p.epsilon if p.name == "dpsgd" else None, delta=p.delta,
                noise_multiplier=noise_multiplier if noise_multiplier is not None else p.noise_multiplier,
                clip=p.clip, num_rounds=self.federation.num_rounds, temperature=self.student.temperature,
                count_noise=p.count_noise if release_counts else 0.0)
        return ClientJob(
            seed=self.seed,
            num_clients=self.federation.num_clients,
            dataset=self.dataset,
            partition=self.partition,
            teacher=self.teacher,
            erm_base=erm_base,
            privacy=privacy,
            threads=max(1, int(round(self.federation.client_cpus))),
            device=self.device,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {
    "dataset": DatasetConfig,
    "partition": PartitionConfig,
    "teacher": TeacherConfig,
    "aggregator": AggregatorConfig,
    "student": StudentConfig,
    "federation": FederationConfig,
    "baselines": BaselinesConfig,
    "query": QueryConfig,
    "privacy": PrivacyConfig,
}


def compose(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Compose conf/ with Hydra overrides (as on the command line) into a plain resolved dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        hydra_config.set_config(cfg)  # ${hydra:runtime.choices...} (the run name) resolves as under @hydra.main
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot compose the config from conf/ with overrides {list(overrides)}: {err}") from err
    finally:
        hydra_config.cfg = previous


def _fail(key: str, value: object, why: str) -> None:
    raise ConfigError(f"invalid config: {key} = {value!r}: {why}")


def _section(name: str, raw: Any, cls: type) -> Any:
    if not isinstance(raw, dict):
        _fail(name, raw, "must be a mapping; pick one of the files in conf/" + name)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            _fail(f"{name}.{key}", raw[key], f"unknown key; known keys of {name}: {sorted(known)}")
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING:
                _fail(f"{name}.{f.name}", None, f"missing; set it in conf/{name}/ or as {name}.{f.name}=...")
            continue
        value, wanted = raw[f.name], _TYPES[f.type]
        if isinstance(value, bool) != (wanted is bool) or not isinstance(value, wanted):
            _fail(f"{name}.{f.name}", value, f"must be of type {f.type}")
    return cls(**raw)


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "float | None": (int, float, type(None))}


def _check_choice(key: str, value: str, choices: list[str] | tuple[str, ...] | dict) -> None:
    if value not in choices:
        _fail(key, value, f"unknown name; choose one of {sorted(choices)} (e.g. {key}={sorted(choices)[0]})")


def _check_positive(key: str, value: float, integer: bool = False) -> None:
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        _fail(key, value, "must be a whole number")
    if not value > 0:
        _fail(key, value, "must be > 0")


def validate(raw: dict[str, Any]) -> RunConfig:
    """Check every key of a composed config and return the typed ``RunConfig``.

    Registries are imported here so that a name is valid exactly when a builder is registered for it.
    """
    from fedkd.aggregation import AGGREGATORS
    from fedkd.compression import COMPRESSIONS
    from fedkd.data.benchmarks import BENCHMARKS
    from fedkd.data.partition import PARTITIONERS
    from fedkd.data.sources import SOURCES
    from fedkd.distill import STUDENT_OBJECTIVES
    from fedkd.models import MODELS
    from fedkd.privacy import PRIVACY_MECHANISMS
    from fedkd.query import QUERY_STRATEGIES
    from fedkd.teachers import TEACHER_OBJECTIVES

    if raw.get("resume") is not None:
        _fail("resume", raw["resume"], "resume is an option of the `fedkd` command (fedkd resume=<run dir>), "
              "which reads the run's own config.yaml; it cannot be combined with a composed config here")
    raw = {k: v for k, v in raw.items() if k != "resume"}
    top_known = {"seed", "name", "runs_dir", *_SECTIONS}
    # configs written before these keys existed ran on the simulation engine, on the CPU
    raw = {"engine": "simulation", "device": "cpu", **raw}
    optional = {"engine", "device"}
    for key in raw:
        if key not in top_known | optional:
            _fail(key, raw[key], f"unknown top-level key; known: {sorted(top_known | optional)}")
    for key in top_known:
        if key not in raw:
            _fail(key, None, "missing")
    _check_choice("engine", raw["engine"], ENGINES)
    if not isinstance(raw["device"], str) or not DEVICE_PATTERN.fullmatch(raw["device"]):
        _fail("device", raw["device"], "choose auto (CUDA when this machine has it), cpu, cuda or cuda:<index>")
    sections = {name: _section(name, raw[name], cls) for name, cls in _SECTIONS.items()}
    ds: DatasetConfig = sections["dataset"]
    part: PartitionConfig = sections["partition"]
    teacher: TeacherConfig = sections["teacher"]
    student: StudentConfig = sections["student"]
    fed: FederationConfig = sections["federation"]

    if isinstance(raw["seed"], bool) or not isinstance(raw["seed"], int) or raw["seed"] < 0:
        _fail("seed", raw["seed"], "must be a non-negative whole number")
    _check_choice("dataset.name", ds.name, BENCHMARKS)
    _check_choice("dataset.source", ds.source, SOURCES)
    if not 0.0 < ds.bias_ratio < 1.0:
        _fail("dataset.bias_ratio", ds.bias_ratio, "must lie strictly between 0 and 1 (e.g. 0.99)")
    _check_choice("dataset.group_by", ds.group_by, ("digit_colour", "digit_alignment"))
    if ds.color_std < 0:
        _fail("dataset.color_std", ds.color_std, "must be >= 0")
    if not ds.imbalance >= 1.0:
        _fail("dataset.imbalance", ds.imbalance, "must be >= 1 (1 = balanced, 10 or 100 = long-tailed)")
    _check_positive("dataset.test_per_class", ds.test_per_class, integer=True)
    _check_positive("dataset.val_per_class", ds.val_per_class, integer=True)
    if not 0.0 < ds.transfer_fraction < 1.0:
        _fail("dataset.transfer_fraction", ds.transfer_fraction, "must lie strictly between 0 and 1")
    if not ds.data_root.strip():
        _fail("dataset.data_root", ds.data_root, "must name the folder of the datasets on disk (e.g. data)")
    _check_positive("dataset.image_size", ds.image_size, integer=True)
    if ds.max_examples < 0:
        _fail("dataset.max_examples", ds.max_examples, "must be >= 0 (0 = every official training image)")

    _check_choice("partition.name", part.name, PARTITIONERS)
    _check_choice("partition.by", part.by, ("label", "group"))
    _check_positive("partition.alpha", part.alpha)
    if part.min_partition_size < 0:
        _fail("partition.min_partition_size", part.min_partition_size, "must be >= 0")

    for name, model in (("teacher", teacher), ("student", student)):
        _check_choice(f"{name}.arch", model.arch, MODELS)
        _check_positive(f"{name}.epochs", model.epochs, integer=True)
        _check_positive(f"{name}.lr", model.lr)
        _check_positive(f"{name}.batch_size", model.batch_size, integer=True)
        if not 0.0 <= model.momentum < 1.0:
            _fail(f"{name}.momentum", model.momentum, "must lie in [0, 1)")
        if model.weight_decay < 0:
            _fail(f"{name}.weight_decay", model.weight_decay, "must be >= 0")
        if model.pretrained_path and not Path(model.pretrained_path).is_file():
            _fail(f"{name}.pretrained_path", model.pretrained_path, "no such file; weights are never downloaded: "
                  "save a state dict there (e.g. torchvision's resnet18-f37072fd.pth) or leave it empty")
    if student.min_steps < 0 or int(student.min_steps) != student.min_steps:
        _fail("student.min_steps", student.min_steps, "must be an integer >= 0 (0 = exactly student.epochs)")
    _check_choice("teacher.objective", teacher.objective, TEACHER_OBJECTIVES)
    _check_positive("teacher.la_tau", teacher.la_tau)
    _check_positive("teacher.dro_eta", teacher.dro_eta)
    if not 0.0 < teacher.dfr_holdout < 1.0:
        _fail("teacher.dfr_holdout", teacher.dfr_holdout, "must lie strictly between 0 and 1")
    for key in ("dfr_subsets", "dfr_steps"):
        _check_positive(f"teacher.{key}", getattr(teacher, key), integer=True)
    _check_positive("teacher.dfr_lr", teacher.dfr_lr)
    if teacher.dfr_l2 < 0:
        _fail("teacher.dfr_l2", teacher.dfr_l2, "must be >= 0")
    agg: AggregatorConfig = sections["aggregator"]
    _check_choice("aggregator.name", agg.name, AGGREGATORS)
    _check_positive("aggregator.era_temperature", agg.era_temperature)
    _check_choice("aggregator.biased", agg.biased, ("random_client", "fixed_client", "mean_bases"))
    _check_choice("aggregator.gradient", agg.gradient, ("last_layer", "per_sample"))
    _check_choice("aggregator.param_set", agg.param_set, ("head", "all"))
    _check_choice("aggregator.granularity", agg.granularity, ("example", "batch"))
    _check_choice("aggregator.degenerate", agg.degenerate, ("uniform", "floor"))
    _check_positive("aggregator.floor_eps", agg.floor_eps)
    if agg.biased == "fixed_client" and not 0 <= agg.biased_client < fed.num_clients:
        _fail("aggregator.biased_client", agg.biased_client, f"must name a client, 0..{fed.num_clients - 1}")
    _check_choice("student.objective", student.objective, STUDENT_OBJECTIVES)
    _check_positive("student.temperature", student.temperature)
    if not 0.0 <= student.beta <= 1.0:
        _fail("student.beta", student.beta, "must lie in [0, 1] (0 = average, 1 = worst-class)")
    _check_positive("student.robust_eta", student.robust_eta)
    _check_positive("student.robust_period", student.robust_period, integer=True)
    _check_positive("student.soften_power", student.soften_power)
    if student.labeled_weight < 0:
        _fail("student.labeled_weight", student.labeled_weight, "must be >= 0")
    if not 0.0 < student.dfr_holdout < 1.0:
        _fail("student.dfr_holdout", student.dfr_holdout, "must lie strictly between 0 and 1")
    for key in ("dfr_subsets", "dfr_steps"):
        _check_positive(f"student.{key}", getattr(student, key), integer=True)
    _check_positive("student.dfr_lr", student.dfr_lr)

    _check_positive("federation.num_clients", fed.num_clients, integer=True)
    _check_positive("federation.num_rounds", fed.num_rounds, integer=True)
    _check_positive("federation.client_cpus", fed.client_cpus)
    if fed.client_gpus < 0:
        _fail("federation.client_gpus", fed.client_gpus, "must be >= 0 (a fraction shares one GPU between clients)")
    if fed.client_gpus > 0 and raw["device"] == "cpu":
        _fail("federation.client_gpus", fed.client_gpus, "reserves GPUs that device=cpu does not use; use "
              "device=auto or cuda, or federation.client_gpus=0")
    _check_positive("federation.round_timeout", fed.round_timeout)
    _check_positive("federation.min_clients", fed.min_clients, integer=True)
    if fed.min_clients > fed.num_clients:
        _fail("federation.min_clients", fed.min_clients,
              f"must be at most federation.num_clients={fed.num_clients} (a round cannot wait for more clients)")
    _check_positive("baselines.one_hot_epochs", sections["baselines"].one_hot_epochs, integer=True)
    _check_query(sections["query"], QUERY_STRATEGIES, COMPRESSIONS)
    _check_privacy(sections["privacy"], sections["aggregator"], sections["query"], teacher, student,
                   PRIVACY_MECHANISMS)

    return RunConfig(
        seed=raw["seed"], name=str(raw["name"]), runs_dir=str(raw["runs_dir"]), engine=raw["engine"],
        device=raw["device"], **sections
    )


def _check_query(query: QueryConfig, strategies: dict, compressions: dict) -> None:
    _check_choice("query.name", query.name, strategies)
    for key in ("per_round", "total"):
        value = getattr(query, key)
        if value < 0 or (key == "per_round" and value == 0):
            _fail(f"query.{key}", value, "must be > 0: a fraction of the transfer pool (<= 1) or a count (> 1)")
        if value > 1 and value != int(value):
            _fail(f"query.{key}", value, "a budget above 1 is a count of points and must be a whole number")
    if query.name == "all" and query.per_round != 1.0:
        _fail("query.per_round", query.per_round,
              "query=all asks about the whole pool every round; pick query=random|margin|entropy|rad for a budget")
    _check_positive("query.rad_min_gain", query.rad_min_gain)
    _check_choice("query.compression", query.compression, compressions)
    _check_positive("query.top_k", query.top_k, integer=True)


def needs_class_counts(agg: AggregatorConfig) -> bool:
    """Whether the aggregator reads the clients' class counts (metadata that a privacy setting must cover)."""
    return agg.name == "support" or (agg.name == "agre" and (agg.prior_correction or agg.with_support))


def _check_privacy(p: PrivacyConfig, agg: AggregatorConfig, query: QueryConfig, teacher: TeacherConfig,
                   student: StudentConfig, mechanisms: dict) -> None:
    _check_choice("privacy.name", p.name, mechanisms)
    if p.name == "none":
        return
    if p.epsilon is None and p.noise_multiplier is None:
        _fail("privacy.epsilon", None, f"privacy={p.name} needs a target privacy.epsilon (σ is calibrated from it) "
              "or a privacy.noise_multiplier")
    if p.epsilon is not None and not (p.epsilon > 0 and math.isfinite(p.epsilon)):
        _fail("privacy.epsilon", p.epsilon, "must be a finite number > 0 (for no privacy use privacy=none)")
    if p.noise_multiplier is not None and not p.noise_multiplier > 0:
        _fail("privacy.noise_multiplier", p.noise_multiplier, "must be > 0")
    if not 0.0 < p.delta < 1.0:
        _fail("privacy.delta", p.delta, "must lie strictly between 0 and 1 (and below 1/n; e.g. 1e-5)")
    _check_positive("privacy.clip", p.clip)
    if p.threshold < 0:
        _fail("privacy.threshold", p.threshold, "must be >= 0 (0 = plain GNMax, every query answered)")
    if p.name == "gnmax" and p.threshold > 0 and not p.threshold_sigma > 0:
        _fail("privacy.threshold_sigma", p.threshold_sigma, "confident GNMax (privacy.threshold > 0) needs σ1 > 0")
    if p.name == "gnmax" and p.threshold > 0 and p.noise_multiplier is None:
        _fail("privacy.noise_multiplier", None, "confident GNMax is not calibrated from a target ε here: give σ "
              "(privacy.noise_multiplier) and σ1 (privacy.threshold_sigma); privacy.epsilon then caps the run")
    if p.count_noise < 0:
        _fail("privacy.count_noise", p.count_noise, "must be >= 0")
    if p.name == "gnmax" and agg.name != "vote":
        _fail("aggregator.name", agg.name, "privacy=gnmax releases the noisy argmax of the teachers' votes; it "
              "replaces the aggregator: use aggregator=vote (a weighted vote has no bounded sensitivity)")
    if query.name == "rad" or student.objective == "softened":
        key, value = ("query.name", query.name) if query.name == "rad" else ("student.objective", student.objective)
        _fail(key, value, f"needs the teachers' soft labels on the server's labeled split every round, a release "
              f"privacy={p.name} does not account for; use query=all|random|margin|entropy and student=kd|robust_kd")
    if p.name == "dpsgd" and teacher.arch.startswith("resnet"):
        _fail("teacher.arch", teacher.arch, "privacy=dpsgd: Opacus computes no per-sample gradients through the "
              "BatchNorm layers of ResNet-18; use teacher.arch=cnn or mlp")
    if p.name == "dpsgd" and teacher.objective != "erm":
        _fail("teacher.objective", teacher.objective, "privacy=dpsgd trains teachers with Opacus DP-SGD on "
              "cross-entropy; the other objectives use the shard in ways DP-SGD does not cover: use teacher=erm")
    if needs_class_counts(agg):
        if p.unit_is_client():
            _fail("aggregator.name", agg.name, f"this aggregator reads the clients' class counts, whose sensitivity "
                  f"to replacing a client is unbounded under client-level privacy={p.name}: use aggregator=mean, "
                  "vote, entropy_reduction or agre without prior_correction/with_support")
        if not p.count_noise > 0:
            _fail("privacy.count_noise", p.count_noise, f"aggregator={agg.name} reads the clients' class counts: "
                  "under privacy=dpsgd they are released with Gaussian noise, so set privacy.count_noise > 0")
        if p.epsilon is not None and p.noise_multiplier is None:
            _fail("privacy.noise_multiplier", None, "with noisy class counts the DP-SGD noise is not calibrated "
                  "from a target ε here: give privacy.noise_multiplier (ε is then reported, counts included)")


def check_against_data(cfg: RunConfig) -> None:
    """Checks that need the data and the machine: the device, its files under data_root, a construction its images
    allow, enough pool examples for the clients, a partition that can be drawn."""
    from fedkd.data import build_benchmark, federated_data
    from fedkd.data.ondisk import MissingDataError
    from fedkd.data.partition import PartitionError
    from fedkd.device import DeviceError, cuda_device_count, resolve_device

    try:
        resolve_device(cfg.device)
    except DeviceError as err:
        _fail("device", cfg.device, str(err))
    if cfg.engine == "simulation" and cfg.federation.client_gpus > cuda_device_count():
        _fail("federation.client_gpus", cfg.federation.client_gpus, f"this machine has {cuda_device_count()} "
              "CUDA device(s) for Ray to hand out, so no client could ever be scheduled; lower it (0 = none)")

    try:
        bench = build_benchmark(cfg.dataset, cfg.seed)
    except MissingDataError as err:
        _fail("dataset.data_root", cfg.dataset.data_root, f"dataset={cfg.dataset.name} needs files there:\n{err}")
    except ValueError as err:
        _fail("dataset", cfg.dataset.name, str(err))
    pool_size = len(bench["pool"])
    if cfg.query.compression == "topk" and cfg.query.top_k >= bench.num_classes:
        _fail("query.top_k", cfg.query.top_k, f"must be below the {bench.num_classes} classes of {cfg.dataset.name} "
              "(top-k of all classes is no compression; use query.compression=fp32)")
    if cfg.federation.num_clients > pool_size:
        _fail(
            "federation.num_clients",
            cfg.federation.num_clients,
            f"more clients than the {pool_size} examples of the {cfg.dataset.name} client pool",
        )
    try:
        data = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
    except PartitionError as err:
        _fail(
            "partition",
            cfg.partition.name,
            f"{err}; try fewer clients (federation.num_clients), a larger partition.alpha "
            "or a smaller partition.min_partition_size",
        )

    p = cfg.privacy
    if p.name != "none":
        if p.unit_is_client():
            n, unit = cfg.federation.num_clients, "clients (the privacy unit is a client)"
        else:
            n, unit = min(len(data.shard(i)) for i in range(cfg.federation.num_clients)), \
                "examples in the smallest client shard (the privacy unit is an example)"
        if p.delta >= 1.0 / n:
            _fail("privacy.delta", p.delta, f"must be below 1/n = {1.0 / n:.3g} with n = {n} {unit}; e.g. 1e-5")
        from fedkd.aggregation import AGGREGATORS
        from fedkd.privacy import PRIVACY_MECHANISMS, PrivacyBudgetError

        try:
            PRIVACY_MECHANISMS[p.name](p).plan(cfg, len(bench["transfer"]),
                                               [len(data.shard(i)) for i in range(cfg.federation.num_clients)],
                                               AGGREGATORS[cfg.aggregator.name].needs_base)
        except PrivacyBudgetError as err:
            _fail("privacy.epsilon", p.epsilon, str(err))


def load_run_config(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose, validate and check a run's config: everything that can be wrong is caught here."""
    cfg = validate(compose(overrides))
    check_against_data(cfg)
    return cfg
