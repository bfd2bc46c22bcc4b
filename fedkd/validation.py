"""The one validator: it walks the registries, so that a section is valid exactly when its name is registered and
its values fit the parameter dataclass the component declared, and every component's cross-field ``check``
passes. Bad values raise one ``ConfigError`` naming the key and how to fix it, before any process starts.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from fedkd.aggregators import AGGREGATORS
from fedkd.checkpoint import SERVER_CHECKPOINT, CheckpointError, load
from fedkd.compression import COMPRESSIONS
from fedkd.conf_dir import compose
from fedkd.config import (
    COMPONENT_SECTIONS,
    DEVICE_PATTERN,
    ENGINES,
    RUN_SECTIONS,
    ClientJob,
    ClientPrivacy,
    Components,
    ConfigError,
    RunConfig,
    check_choice,
    fail,
    parse_section,
)
from fedkd.data import build_benchmark, federated_data
from fedkd.data.benchmarks import BENCHMARKS
from fedkd.data.ondisk import MissingDataError
from fedkd.data.partition import PARTITIONERS, PartitionError
from fedkd.data.sources import SOURCES
from fedkd.device import DeviceError, cuda_device_count, resolve_device
from fedkd.distill import STUDENT_OBJECTIVES
from fedkd.models import MODELS, build_model
from fedkd.privacy import PRIVACY_MECHANISMS, PrivacyBudgetError, PrivacyPlan
from fedkd.query import QUERY_STRATEGIES
from fedkd.registry import Registry
from fedkd.results import CONFIG_FILE, SUMMARY_FILE, RunDirectory
from fedkd.teachers import TEACHER_OBJECTIVES
from fedkd.trackers import TRACKERS

COMPONENTS: dict[str, Registry] = {r.section: r for r in (BENCHMARKS, PARTITIONERS, TEACHER_OBJECTIVES, AGGREGATORS,
                                                          STUDENT_OBJECTIVES, QUERY_STRATEGIES, PRIVACY_MECHANISMS)}
REFERENCED = {"model": MODELS, "source": SOURCES, "compression": COMPRESSIONS}  # fields that name other entries
TOP_LEVEL = {"seed", "name", "runs_dir", *COMPONENT_SECTIONS, *RUN_SECTIONS}
OPTIONAL_TOP_LEVEL = {"engine", "device", "teacher_store_dir", "logger"}
MAX_SEED = 2**32 - 1
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}")


def check_name(name: Any) -> None:
    """The run's name is the tail of its folder name: letters, digits and ``._+=-``, at most 100 of them."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        fail("name", name, "must be a folder name: 1 to 100 letters, digits or ._+=- (no / or spaces), starting "
             "with a letter or digit")


def parse_component(section: str, raw: Any) -> Any:
    """A component section as the parameter dataclass of the component it names (``name`` or ``objective``)."""
    registry = COMPONENTS[section]
    if not isinstance(raw, dict):
        fail(section, raw, "must be a mapping; pick one of the files in conf/" + section)
    key = f"{section}.{registry.key}"
    if registry.key not in raw:
        fail(key, None, f"missing; pick one of the files in conf/{section}/")
    check_choice(key, raw[registry.key], registry)
    return parse_section(section, raw, registry.params(raw[registry.key]), REFERENCED)


def components_of(cfg: RunConfig) -> Components:
    """The registered components ``cfg`` names."""
    def chosen(section: str) -> Any:
        return COMPONENTS[section][getattr(getattr(cfg, section), COMPONENTS[section].key)]

    return Components(**{s: chosen(s) for s in COMPONENT_SECTIONS},
                      teacher_model=MODELS.traits(cfg.teacher.arch), student_model=MODELS.traits(cfg.student.arch))


def labeled_split_users(cfg: RunConfig, parts: Components) -> list[str]:
    """The settings of ``cfg`` that read the server's labeled split, each as the override that names it."""
    student = cfg.student
    uses = {
        f"teacher={cfg.teacher.objective}": parts.teacher.uses_labeled_split(cfg.teacher),
        f"aggregator={cfg.aggregator.name}": parts.aggregator.needs_labeled_answers,
        f"student={student.objective}": parts.student.uses_labeled_split,
        f"query={cfg.query.name}": parts.query.needs_teacher_error,
        "student.dfr=true": student.dfr,
        "student.select_best_round=true": student.select_best_round,
        "baselines.server_only=true": cfg.baselines.server_only,
        "baselines.centralized=true": cfg.baselines.centralized,  # its ERM + DFR reference
    }
    return [name for name, used in uses.items() if used]


def validate(raw: dict[str, Any]) -> RunConfig:
    """Check every key of a composed config and return the typed ``RunConfig``."""
    if raw.get("resume") is not None:
        fail("resume", raw["resume"], "resume is an option of the `fedkd` command (fedkd resume=<run dir>), "
             "which reads the run's own config.yaml; it cannot be combined with a composed config here")
    raw = {k: v for k, v in raw.items() if k != "resume"}
    # configs written before these keys existed ran on the simulation engine, on the CPU
    raw = {"engine": "simulation", "device": "cpu", **raw}
    for key in raw:
        if key not in TOP_LEVEL | OPTIONAL_TOP_LEVEL:
            fail(key, raw[key], f"unknown top-level key; known: {sorted(TOP_LEVEL | OPTIONAL_TOP_LEVEL)}")
    for key in TOP_LEVEL:
        if key not in raw:
            fail(key, None, "missing")
    check_choice("engine", raw["engine"], ENGINES)
    check_choice("logger", raw.get("logger", "none"), TRACKERS)
    if not isinstance(raw["device"], str) or not DEVICE_PATTERN.fullmatch(raw["device"]):
        fail("device", raw["device"], "choose auto (CUDA when this machine has it), cpu, cuda or cuda:<index>")
    if isinstance(raw["seed"], bool) or not isinstance(raw["seed"], int) or not 0 <= raw["seed"] <= MAX_SEED:
        fail("seed", raw["seed"], f"must be a whole number in 0..{MAX_SEED} (numpy and torch take 32-bit seeds)")
    check_name(raw["name"])
    store = raw.get("teacher_store_dir")
    if store is not None and (not isinstance(store, str) or not store):
        fail("teacher_store_dir", store, "must be a folder (shared by the runs that reuse teachers) or null")
    sections = {name: parse_component(name, raw[name]) for name in COMPONENT_SECTIONS}
    sections |= {name: parse_section(name, raw[name], cls) for name, cls in RUN_SECTIONS.items()}
    fed = sections["federation"]
    if fed.client_gpus > 0 and raw["device"] == "cpu":
        fail("federation.client_gpus", fed.client_gpus, "reserves GPUs that device=cpu does not use; use "
             "device=auto or cuda, or federation.client_gpus=0")
    if fed.min_clients > fed.num_clients:
        fail("federation.min_clients", fed.min_clients,
             f"must be at most federation.num_clients={fed.num_clients} (a round cannot wait for more clients)")
    cfg = RunConfig(seed=raw["seed"], name=str(raw["name"]), runs_dir=str(raw["runs_dir"]), engine=raw["engine"],
                    device=raw["device"], teacher_store_dir=store, logger=raw.get("logger", "none"), **sections)
    parts = components_of(cfg)
    for section in COMPONENT_SECTIONS:
        getattr(cfg, section).check(section, cfg, parts)
    if cfg.dataset.val_per_class == 0 and (users := labeled_split_users(cfg, parts)):
        fail("dataset.val_per_class", 0, "gives the server no labeled split, which these settings read: "
             f"{', '.join(users)} (give the server labeled images, or turn them off)")
    return cfg


def check_against_data(cfg: RunConfig) -> None:
    """Checks that need the data and the machine: the device, its files under data_root, a construction its images
    allow, enough pool examples for the clients, a partition that can be drawn, a privacy budget the run meets."""
    try:
        resolve_device(cfg.device)
    except DeviceError as err:
        fail("device", cfg.device, str(err))
    if cfg.engine == "simulation" and cfg.federation.client_gpus > cuda_device_count():
        fail("federation.client_gpus", cfg.federation.client_gpus, f"this machine has {cuda_device_count()} "
             "CUDA device(s) for Ray to hand out, so no client could ever be scheduled; lower it (0 = none)")

    if cfg.engine == "simulation" and not os.environ.get("RAY_ADDRESS"):
        cpus = len(os.sched_getaffinity(0))
        if cfg.federation.client_cpus > cpus:
            fail("federation.client_cpus", cfg.federation.client_cpus, f"this machine has {cpus} CPUs for Ray to "
                 f"hand out, so no client could ever be scheduled; lower it to at most {cpus}")

    try:
        bench = build_benchmark(cfg.dataset, cfg.seed)
    except MissingDataError as err:
        fail("dataset.data_root", cfg.dataset.data_root, f"dataset={cfg.dataset.name} needs files there:\n{err}")
    except (ValueError, OSError, EOFError) as err:
        fail("dataset", cfg.dataset.name, f"cannot read its files under dataset.data_root={cfg.dataset.data_root}: "
             f"{type(err).__name__}: {err}; replace the damaged file (or fix the value named)")
    for section in ("teacher", "student"):
        training = getattr(cfg, section)
        if training.pretrained_path:
            try:
                build_model(training.arch, bench.input_shape, bench.num_classes, 0, training.pretrained_path)
            except Exception as err:  # noqa: BLE001 - any failure to load means the same to the user
                fail(f"{section}.pretrained_path", training.pretrained_path, f"does not load into {training.arch}: "
                     f"{type(err).__name__}: {err}; save a torchvision-format state dict of the model there")
    pool_size = len(bench["pool"])
    if COMPRESSIONS.traits(cfg.query.compression).get("keeps_top_k") and cfg.query.top_k >= bench.num_classes:
        fail("query.top_k", cfg.query.top_k, f"must be below the {bench.num_classes} classes of {cfg.dataset.name} "
             f"(query.compression={cfg.query.compression} keeps the top k: k of all classes is no compression; use "
             "query.compression=fp32)")
    if cfg.federation.num_clients > pool_size:
        fail("federation.num_clients", cfg.federation.num_clients,
             f"more clients than the {pool_size} examples of the {cfg.dataset.name} client pool")
    try:
        data = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
    except PartitionError as err:
        fail("partition", cfg.partition.name, f"{err}; try fewer clients (federation.num_clients), a larger "
             "partition.alpha or a smaller partition.min_partition_size")

    check_output_location(cfg, bench)

    parts = components_of(cfg)
    mechanism = parts.privacy(cfg.privacy)
    if mechanism.unit == "none":
        return
    shard_sizes = [len(data.shard(i)) for i in range(cfg.federation.num_clients)]
    if mechanism.unit == "client":
        n, unit = cfg.federation.num_clients, "clients (the privacy unit is a client)"
    else:
        n, unit = min(shard_sizes), "examples in the smallest client shard (the privacy unit is an example)"
    if cfg.privacy.delta >= 1.0 / n:
        fail("privacy.delta", cfg.privacy.delta, f"must be below 1/n = {1.0 / n:.3g} with n = {n} {unit}; e.g. 1e-5")
    try:
        plan = mechanism.plan(cfg, len(bench["transfer"]), shard_sizes, parts.aggregator)
    except PrivacyBudgetError as err:
        fail("privacy.epsilon", getattr(cfg.privacy, "epsilon", None), str(err))
    problem = mechanism.data_problem(plan, bench.num_classes)
    if problem:
        fail("privacy.smooth_sensitivity_order", getattr(cfg.privacy, "smooth_sensitivity_order", None), problem)


def first_files_bytes(cfg: RunConfig, bench: Any) -> int:
    """About what a run writes by the end of its first round: the student (checkpoint and student.pt) and each
    simulated client's saved teacher (and ERM base), float32, plus a MiB for the rest."""
    def size(arch: str) -> int:
        with torch.device("meta"):
            model = MODELS[arch](bench.input_shape, bench.num_classes)
        return 4 * sum(t.numel() for t in [*model.parameters(), *model.buffers()])

    teachers = cfg.federation.num_clients * size(cfg.teacher.arch) * 2
    return 2 * size(cfg.student.arch) + teachers + 2**20


def check_output_location(cfg: RunConfig, bench: Any) -> None:
    """``runs_dir`` can be made and written, and its disk has room for the run's first files; the probe file is
    removed at once."""
    folder = Path(cfg.runs_dir).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        fail("runs_dir", cfg.runs_dir, f"{existing} is a file, not a folder; choose another runs_dir")
    try:
        with tempfile.TemporaryFile(dir=existing) as probe:
            probe.write(b"\0")  # creating a file there is the check; it is gone when closed
    except OSError as err:
        fail("runs_dir", cfg.runs_dir, f"cannot write in {existing} ({err.strerror}); choose a writable runs_dir")
    free, needed = shutil.disk_usage(existing).free, first_files_bytes(cfg, bench)
    if free < needed:
        fail("runs_dir", cfg.runs_dir, f"{existing} has {free / 2**20:.1f} MiB free, and the run's first round "
             f"writes about {needed / 2**20:.1f} MiB; free space or choose another runs_dir")


def load_run_config(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose, validate and check a run's config: everything that can be wrong is caught here."""
    cfg = validate(compose(overrides))
    check_against_data(cfg)
    return cfg


def parse_client_job(text: str) -> ClientJob:
    """A client job from its YAML (the wire form), with each section typed by its component's parameters."""
    raw = yaml.safe_load(text)
    try:
        return ClientJob(
            seed=int(raw["seed"]),
            num_clients=int(raw["num_clients"]),
            dataset=parse_component("dataset", raw["dataset"]),
            partition=parse_component("partition", raw["partition"]),
            teacher=parse_component("teacher", raw["teacher"]),
            erm_base=bool(raw["erm_base"]),
            privacy=ClientPrivacy(**raw.get("privacy", {})),
            threads=int(raw.get("threads", 1)),
            device=str(raw.get("device", "cpu")),
        )
    except ConfigError as err:
        raise ValueError(f"the client job does not match this fedkd's components: {err}") from err


def client_job(cfg: RunConfig, plan: PrivacyPlan | None = None) -> ClientJob:
    """The job every client of ``cfg`` gets, as its components shape it: the ERM base when the aggregator needs
    one, and what the privacy mechanism asks of the clients (with the σ the server's ``plan`` calibrated)."""
    parts = components_of(cfg)
    plan = plan or PrivacyPlan(noise_multiplier=None, releases_per_query=0, planned_queries=0, planned_epsilon=None,
                               cap=None)
    privacy = parts.privacy(cfg.privacy).client_privacy(cfg, plan, parts.aggregator.needs_class_counts(cfg.aggregator))
    return cfg.client_job(privacy, erm_base=parts.aggregator.needs_base)


def resume_target(path: str | Path) -> tuple[RunConfig, RunDirectory]:
    """The config and directory of a run to continue, after checking that it can be: its config.yaml is valid,
    it has a checkpoint, and it has rounds left."""
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(f"invalid config: resume = {str(path)!r}: not a run directory (no {CONFIG_FILE}); "
                          "give the folder a run printed as 'run directory'")
    try:
        raw = yaml.safe_load((folder / CONFIG_FILE).read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"invalid config: resume = {str(path)!r}: {folder / CONFIG_FILE} cannot be read as YAML "
                          f"({type(err).__name__}); restore it from the run's provenance or start the run again"
                          ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config: resume = {str(path)!r}: {folder / CONFIG_FILE} is not a config "
                          "(not a mapping of sections); restore it or start the run again")
    cfg = validate(raw)
    check_against_data(cfg)
    checkpoint = folder / SERVER_CHECKPOINT
    if not checkpoint.exists():
        raise ConfigError(f"invalid config: resume = {str(path)!r}: no {SERVER_CHECKPOINT} (the run stopped before "
                          "its first round ended); start it again instead")
    try:
        done = load(checkpoint)["round"]
    except CheckpointError as err:
        raise ConfigError(f"invalid config: resume = {str(path)!r}: {err}") from err
    if done >= cfg.federation.num_rounds and (folder / SUMMARY_FILE).exists():
        raise ConfigError(f"invalid config: resume = {str(path)!r}: the run finished all {done} rounds; nothing "
                          "to resume")
    return cfg, RunDirectory(folder)
