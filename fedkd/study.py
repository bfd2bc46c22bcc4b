"""A study: methods x settings x seeds declared in one config file (conf/study/<name>.yaml) and run by
``fedkd -m +study=<name>``. The study sweeper expands the grid (``hydra.sweeper.params``, and its named cells:
hydra_plugins/fedkd_study_sweeper); this module holds what the grid cannot say (which axes make the method, the
reference each method is paired with in its setting, the references computed once per setting, the seeds a method
is reported on or was designed on, the paper's numbers, the curve to draw) and what a rerun needs: whether a job's
folder holds a finished run (skipped), a killed one (resumed from its checkpoint), or nothing worth keeping
(started again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedkd.checkpoint import SERVER_CHECKPOINT
from fedkd.field_types import declared_default
from fedkd.results import CONFIG_FILE, SUMMARY_FILE, write_text_whole

STUDY_FILE = "study.yaml"  # the study section, beside its jobs' folders (what `fedkd report` reads)
JOB_DIR_RESOLVER = "fedkd_job_dir"  # ${fedkd_job_dir:${hydra.job.override_dirname}}: conf/study/_sweep.yaml
JOB_DIR_BYTES = 200  # a job folder's name at most (file systems allow 255 bytes)
JOB_FILE = "job.yaml"  # the job's sweep overrides, in its run directory
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SCALAR = (str, int, float, bool)


class StudyError(ValueError):
    """The study section is not one fedkd can run or report."""


@dataclass(frozen=True)
class PaperValue:
    """One number of the paper reproduced: the jobs it stands beside (``where``: override values) and its value,
    in the units of the study's ``paper_metric`` (fractions, as fedkd reports them). With ``reference`` (e.g.
    ``teachers (mean)``, ``ensemble``, ``centralized_erm``) it stands beside that reference of the setting
    ``where`` names instead of a method's student."""

    where: dict[str, Any]
    value: float
    reference: str | None = None


@dataclass(frozen=True)
class DesignSeeds:
    """The seeds whose results a method's design read (``where``: the override values that name the method): its
    results there are no evidence for it, and the report keeps them apart."""

    where: dict[str, str]
    seeds: list[int]


@dataclass(frozen=True)
class ReferenceRule:
    """The references (``baselines.*``) that the reference method's jobs matching ``where`` compute (a null value:
    the axis is absent): the server-only and centralized models once per setting and seed, not on every job."""

    where: dict[str, str]
    baselines: dict[str, Any]


@dataclass(frozen=True)
class Curve:
    """A study's curve plot: each metric against ``x`` (a sweep axis with numeric values, or a cost the report
    reads, e.g. ``soft labels / teacher``, ``ε spent (guarantee)``), one line per value of the ``series`` axes, one
    panel per value of the ``panels`` axes; jobs without ``x`` (no privacy, say) as a dashed level per series."""

    x: str
    series: list[str]
    panels: list[str] = field(default_factory=list)
    log_x: bool = False


BASELINES = ("ensemble", "server_only", "centralized")
REFERENCE_FREE = "baselines."  # overrides that add references to a run and change none of its results


@dataclass(frozen=True)
class StudyConfig:
    """conf/study/<name>.yaml's ``study`` section."""

    name: str
    method: tuple[str, ...] = ("aggregator",)  # the sweep axes whose values make the method; the others the setting
    reference: dict[str, str] | None = None  # the method every other one is paired against, setting by setting
    seeds_of: dict[str, list[int]] = field(default_factory=dict)  # methods reported on other seeds than the grid's
    paper_source: str | None = None  # e.g. "AGRE-KD (arXiv 2411.14984), Table 1"
    paper_metric: str | None = None  # the summary metric the paper's numbers are comparable with
    paper: list[PaperValue] = field(default_factory=list)
    designed_on: list[DesignSeeds] = field(default_factory=list)
    references: list[ReferenceRule] = field(default_factory=list)
    curve: Curve | None = None

    def baselines_of(self, overrides: dict[str, str]) -> dict[str, Any]:
        """The baselines the ``references`` rules turn on for a job of the reference method (later rules win)."""
        out: dict[str, Any] = {}
        if not self.is_reference(overrides):
            return out
        for rule in self.references:
            if all(overrides.get(k) == v for k, v in rule.where.items()):
                out.update(rule.baselines)
        return out

    def design_seed(self, overrides: dict[str, str], seed: int) -> bool:
        """Whether ``seed`` is one the job's method was designed on."""
        return any(seed in d.seeds and all(overrides.get(k) == v for k, v in d.where.items())
                   for d in self.designed_on)

    def method_of(self, overrides: dict[str, str]) -> dict[str, str]:
        """A job's method: its values on the method axes."""
        return {k: v for k, v in overrides.items() if k in self.method}

    def setting_of(self, overrides: dict[str, str]) -> dict[str, str]:
        """A job's setting: what its teachers and data depend on (neither the method nor a reference it adds)."""
        return {k: v for k, v in overrides.items() if k not in self.method and not k.startswith(REFERENCE_FREE)}

    def is_reference(self, overrides: dict[str, str]) -> bool:
        return self.reference is not None and self.method_of(overrides) == self.reference

    def label(self, overrides: dict[str, str], cell: str | None = None) -> str:
        """What the report calls a job's method: its cell's name, or the value of the one method axis, or the
        method axes' ``key=value`` pairs."""
        if cell:
            return cell
        method = self.method_of(overrides)
        if len(self.method) == 1:
            return method.get(self.method[0], "")
        return " ".join(f"{k}={v}" for k, v in method.items())

    def runs_seed(self, label: str, seed: int) -> bool:
        """Whether the study reports the method ``label`` at ``seed`` (a method designed on some seeds runs on
        fresh ones)."""
        seeds = self.seeds_of.get(str(label))
        return seeds is None or seed in seeds

    def reference_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in (self.reference or {}).items())


def _fail(key: str, value: Any, why: str) -> None:
    raise StudyError(f"invalid config: study.{key} = {value!r}: {why}")


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _override_text(value: Any) -> str:
    """A value as a job's overrides hold it: Hydra's sweeper writes ``True``, ``0.5``, ``mean``."""
    return str(value)


def parse_study(raw: Any) -> StudyConfig:
    """The typed study section, or one error naming the key."""
    if not isinstance(raw, dict):
        raise StudyError(f"invalid config: study = {raw!r}: must be a mapping (conf/study/<name>.yaml)")
    known = {"name", "method", "reference", "seeds_of", "paper_source", "paper_metric", "paper", "designed_on",
             "references", "curve"}
    for key in raw:
        if key not in known:
            _fail(key, raw[key], f"unknown key; known: {sorted(known)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        _fail("name", name, "must be a folder name: 1 to 64 letters, digits or ._- (its jobs go under studies/<name>)")
    method = raw.get("method", "aggregator")
    axes = [method] if isinstance(method, str) else method
    if not isinstance(axes, list) or not axes or not all(isinstance(a, str) and a for a in axes):
        _fail("method", method, "must name the sweep axis (or list the axes) whose values make the method, e.g. "
              "aggregator or [aggregator, student]")
    reference = raw.get("reference")
    if reference is not None:
        if isinstance(reference, SCALAR) and len(axes) == 1:
            reference = {axes[0]: reference}
        if not isinstance(reference, dict) or not reference or not set(reference) <= set(axes) or not all(
                isinstance(v, SCALAR) for v in reference.values()):
            _fail("reference", raw.get("reference"), f"must be a value of the method axis, or map method axes "
                  f"{axes} to values")
        reference = {str(k): _override_text(v) for k, v in reference.items()}
    seeds_of = raw.get("seeds_of") or {}
    if not isinstance(seeds_of, dict):
        _fail("seeds_of", seeds_of, "must map a method to the list of seeds it is reported on")
    for key, seeds in seeds_of.items():
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                 and s >= 0 for s in seeds):
            _fail(f"seeds_of.{key}", seeds, "must be a non-empty list of seeds (whole numbers >= 0)")
    paper = raw.get("paper") or []
    if not isinstance(paper, list):
        _fail("paper", paper, "must be a list of {where: {axis: value, ...}, value: number}")
    values = []
    for i, row in enumerate(paper):
        if (not isinstance(row, dict) or not {"where", "value"} <= set(row) <= {"where", "value", "reference"}
                or not isinstance(row["where"], dict) or not isinstance(row.get("reference", ""), str)):
            _fail(f"paper[{i}]", row, "must be {where: {axis: value, ...}, value: number} (and reference: name)")
        value = row["value"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            _fail(f"paper[{i}].value", value, "must be a finite number")
        values.append(PaperValue(where=dict(row["where"]), value=float(value), reference=row.get("reference")))
    designed_on = []
    for i, row in enumerate(raw.get("designed_on") or []):
        if (not isinstance(row, dict) or set(row) != {"where", "seeds"} or not isinstance(row["where"], dict)
                or not row["where"] or not isinstance(row["seeds"], list) or not row["seeds"]
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in row["seeds"])):
            _fail(f"designed_on[{i}]", row, "must be {where: {axis: value, ...}, seeds: [seed, ...]}")
        designed_on.append(DesignSeeds({str(k): _override_text(v) for k, v in row["where"].items()},
                                       list(row["seeds"])))
    references = []
    for i, row in enumerate(raw.get("references") or []):
        if (not isinstance(row, dict) or set(row) != {"where", "baselines"} or not isinstance(row["where"], dict)
                or not isinstance(row["baselines"], dict) or not row["baselines"]
                or not set(row["baselines"]) <= set(BASELINES)
                or not all(isinstance(v, bool) for v in row["baselines"].values())):
            _fail(f"references[{i}]", row, f"must be {{where: {{axis: value, ...}}, baselines: {{name: true|false}}}} "
                  f"with names among {list(BASELINES)}")
        references.append(ReferenceRule({str(k): None if v is None else _override_text(v)
                                         for k, v in row["where"].items()},
                                        dict(row["baselines"])))
    metric = raw.get("paper_metric")
    curve = raw.get("curve")
    if curve is not None:
        if (not isinstance(curve, dict) or not set(curve) <= {"x", "series", "panels", "log_x"}
                or not isinstance(curve.get("x"), str) or not _names(curve.get("series", []))
                or not _names(curve.get("panels", [])) or not isinstance(curve.get("log_x", False), bool)):
            _fail("curve", curve, "must be {x: axis or cost, series: [axis, ...], panels: [axis, ...], log_x: bool}")
        curve = Curve(curve["x"], list(curve.get("series", [])), list(curve.get("panels", [])),
                      curve.get("log_x", False))
    if references and reference is None:
        _fail("references", raw.get("references"), "the references are computed on the reference method's jobs: "
              "name the study's reference")
    if values and not isinstance(metric, str):
        _fail("paper_metric", metric, "names the metric the paper's numbers compare with (e.g. "
              "two_group_worst_group_accuracy)")
    return StudyConfig(name=name, method=tuple(axes), reference=reference,
                       seeds_of={str(k): list(v) for k, v in seeds_of.items()},
                       paper_source=raw.get("paper_source"), paper_metric=metric, paper=values,
                       designed_on=designed_on, references=references, curve=curve)


NOT_A_SETTING = ("study", "teacher_store_dir")  # the study (and study.*), where teachers come from


def sweep_overrides(task_overrides: list[str]) -> dict[str, str]:
    """A job's own override values (``key=value``), without those that change no result (``NOT_A_SETTING``)."""
    out = {}
    for override in task_overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key not in NOT_A_SETTING and not key.startswith("study."):
            out[key] = value
    return out


def write_study_file(folder: Path, study: StudyConfig, grid: dict[str, Any], cells: dict[str, Any] | None = None
                     ) -> None:
    """``studies/<name>/study.yaml``: the study section, its grid and its cells, rewritten by every job (they
    agree)."""
    folder.mkdir(parents=True, exist_ok=True)
    section = {**dataclasses.asdict(study), "method": list(study.method)}
    text = yaml.safe_dump({"study": section, "grid": grid, **({"cells": cells} if cells else {})}, sort_keys=False)
    path = folder / STUDY_FILE
    if path.exists() and path.read_text() == text:
        return
    write_text_whole(path, text)


def read_study_file(folder: Path) -> tuple[StudyConfig, dict, dict] | None:
    """The study section, grid and cells (in the study's order) of a study folder; None for a folder that is not
    one."""
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        return None
    raw = yaml.safe_load(path.read_text())
    study = dict(raw["study"])
    study["paper"] = [{"where": p["where"], "value": p["value"], **({"reference": p["reference"]}
                                                                    if p.get("reference") else {})}
                      for p in study.get("paper") or []]
    study["designed_on"] = [{"where": d["where"], "seeds": d["seeds"]} for d in study.get("designed_on") or []]
    study["references"] = [{"where": r["where"], "baselines": r["baselines"]} for r in study.get("references") or []]
    return parse_study(study), raw.get("grid") or {}, dict(raw.get("cells") or {})


NOT_IN_RESULTS = ("teacher_store_dir", "engine", "logger")  # the same bits on either engine, with or without them


def _comparable(config: dict) -> dict:
    """A run's config as far as its results go."""
    return {k: v for k, v in config.items() if k not in NOT_IN_RESULTS}


def with_added_defaults(written: Any, current: Any) -> Any:
    """``written`` (a run's config as its folder holds it) completed with the fields of ``current`` (the config
    dataclass of the rerun) that it lacks, where ``current`` holds them at their declared default: fields added to
    the code after that run, whose defaults keep the behaviour of the runs made before them (the rule for every
    new field). A lacking field at any other value stays lacking, and the configs differ."""
    if not (dataclasses.is_dataclass(current) and isinstance(written, dict)):
        return written
    out = dict(written)
    for spec in dataclasses.fields(current):
        value = getattr(current, spec.name)
        if spec.name in out:
            out[spec.name] = with_added_defaults(out[spec.name], value)
        elif declared_default(spec) == value:
            out[spec.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def job_state(folder: Path, config: Any) -> str:
    """What a rerun does with a job's folder: ``new`` (empty or absent), ``finished`` (a summary: skip it),
    ``resume`` (a checkpoint: continue it), ``restart`` (a config but no finished round: run it again in place).
    ``config`` is the job's run config (a dataclass). A folder holding a run of another config is refused: a study
    never overwrites a result. Fields added to the config since the folder's run, at their defaults, do not count
    as another config."""
    if not folder.exists() or not any(folder.iterdir()):
        return "new"
    try:
        written = yaml.safe_load((folder / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"the job folder {folder} holds files but no readable {CONFIG_FILE} ({type(err).__name__}): "
                         "move it away to run the job again") from None
    wanted = yaml.safe_load(yaml.safe_dump(dataclasses.asdict(config)))
    completed = yaml.safe_load(yaml.safe_dump(with_added_defaults(written, config)))
    if not isinstance(written, dict) or _comparable(completed) != _comparable(wanted):
        raise StudyError(f"the job folder {folder} holds a run of another config (the study's settings changed "
                         "since it ran): give the study a new name, or move the folder away to run it again")
    if (folder / SUMMARY_FILE).exists():
        return "finished"
    if (folder / SERVER_CHECKPOINT).exists():
        return "resume"
    return "restart"


def job_dir_name(overrides: str) -> str:
    """A job's folder name: its overrides (Hydra's ``override_dirname``), or where they would not fit a file name,
    their start and a digest of them all; the job's own job.yaml holds them whole, and the report reads that."""
    if len(overrides.encode()) <= JOB_DIR_BYTES:
        return overrides
    digest = hashlib.sha256(overrides.encode()).hexdigest()[:16]
    head = overrides.encode()[: JOB_DIR_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def register_job_dir_resolver() -> None:
    """Make ``${fedkd_job_dir:...}`` known to OmegaConf (once per process, before Hydra names a job's folder)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(JOB_DIR_RESOLVER):
        OmegaConf.register_new_resolver(JOB_DIR_RESOLVER, job_dir_name)

