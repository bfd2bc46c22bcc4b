"""A study's finished jobs, grouped and compared: per job its overrides, seed, metrics (SubpopBench's set), the
round each model-selection rule picks, its references and costs; per group the seeds it ran; the paired
differences against the study's reference in the same setting, with their 95 % t interval.
``fedkd.study_report`` renders them."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from fedkd.audit import AUDIT_FILE
from fedkd.results import PREDICTIONS_FILE, read_predictions, read_probabilities, write_text_whole
from fedkd.run_groups import Run, find_run_dirs, load_runs, mean_std
from fedkd.server_only import SERVER_ONLY_MODELS
from fedkd.study import JOB_FILE, REFERENCE_FREE, StudyConfig, read_study_file
from fedkd.subpop_metrics import subpopulation_metrics

CONFIDENCE = 0.95
SUBPOPULATION_FILE = "subpopulation.json"  # a job's metrics from its predictions, kept where its large files are not
RUN_TIME = "run time (s)"
DESIGN_NOTE = "(design seeds: no evidence)"
HEADLINE = ("accuracy", "worst_group_accuracy", "two_group_worst_group_accuracy")
SUBPOPULATION = ("mean_group_accuracy", "class_balanced_accuracy", "worst_class_accuracy", "worst_class_precision",
                 "worst_class_f1", "train_weighted_accuracy", "auroc", "ece")
SELECTIONS = {"last round": None, "best validation WGA": ("val", "worst_group_accuracy"),
              "best validation accuracy": ("val", "accuracy"),
              "test oracle (upper bound, not a result)": ("test", "worst_group_accuracy")}


@dataclass
class StudyRun:
    """One finished job: its sweep overrides without the seed, its seed, and every metric it allows."""

    run: Run
    overrides: dict[str, str]  # without the seed, and without the references it adds (baselines.*)
    seed: int
    metrics: dict[str, float]
    selected: dict[str, float]  # test WGA of the round each SELECTIONS rule picks
    references: dict[str, float]
    cell: str | None = None  # the study sweeper's cell that made the job
    costs: dict[str, float] = field(default_factory=dict)
    answered: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # per group: asked, answered, correct


@dataclass
class MethodGroup:
    label: str
    overrides: dict[str, str]
    runs: list[StudyRun] = field(default_factory=list)
    design: bool = False  # the seeds the method was designed on: kept apart, no evidence for it

    def by_seed(self, metric: str) -> dict[int, float]:
        return {r.seed: r.metrics[metric] for r in self.runs if metric in r.metrics}


def confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95 % t interval of the mean; NaNs for fewer than two values."""
    if len(values) < 2:
        return math.nan, math.nan
    mean, std = mean_std(values)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * std / math.sqrt(len(values))
    return mean - half, mean + half


def _selected(records: list[dict]) -> dict[str, float]:
    out = {}
    if not records:
        return out
    for name, rule in SELECTIONS.items():
        if rule is None:
            out[name] = records[-1]["test"]["worst_group_accuracy"]
        elif all(rule[0] in r for r in records):
            best = max(range(len(records)), key=lambda i: (records[i][rule[0]][rule[1]], -i))  # first best round
            out[name] = records[best]["test"]["worst_group_accuracy"]
    return out


def _references(summary: dict) -> dict[str, float]:
    """The references a run carries: its teachers (their mean), their ensemble, the server-only one-hot model, the
    centralized models (non-federated)."""
    out = {}
    teachers = summary.get("teachers") or {}
    if "mean_accuracy" in teachers:
        out["teachers (mean) accuracy"] = teachers["mean_accuracy"]
        out["teachers (mean) WGA"] = teachers["mean_worst_group_accuracy"]
    if "mean_two_group_worst_group_accuracy" in teachers:
        out["teachers (mean) two-group WGA"] = teachers["mean_two_group_worst_group_accuracy"]
    for name, report in summary.get("baselines", {}).items():
        if isinstance(report, dict) and "worst_group_accuracy" in report:
            out[f"{name} accuracy"] = report["accuracy"]
            out[f"{name} WGA"] = report["worst_group_accuracy"]
            if report.get("two_group_worst_group_accuracy") is not None:
                out[f"{name} two-group WGA"] = report["two_group_worst_group_accuracy"]
    return out


REFERENCE_METRIC = {"accuracy": "accuracy", "worst_group_accuracy": "WGA",
                    "two_group_worst_group_accuracy": "two-group WGA"}  # a metric's name among a run's references


def setting_references(study: StudyConfig, groups: Sequence[MethodGroup]) -> dict[tuple, dict[str, dict[int, float]]]:
    """Per setting (its override items, in the groups' order), every reference's value per seed: a reference is the
    same for every method of a setting (their teachers and data), and those computed once sit on the reference
    method's job, read first."""
    out: dict[tuple, dict[str, dict[int, float]]] = {}
    for g in groups:
        out.setdefault(tuple(study.setting_of(g.runs[0].overrides).items()), {})
    for g in sorted(groups, key=lambda g: not study.is_reference(g.runs[0].overrides)):
        by_seed = out[tuple(study.setting_of(g.runs[0].overrides).items())]
        for r in g.runs:
            for name, value in r.references.items():
                by_seed.setdefault(name, {}).setdefault(r.seed, value)
    return out


def study_run(run: Run, job: dict) -> StudyRun:
    overrides = {str(k): str(v) for k, v in job["overrides"].items() if not str(k).startswith(REFERENCE_FREE)}
    seed = int(overrides.pop("seed", run.config["seed"]))
    metrics = job_metrics(run)
    two_group = run.summary["test"].get("two_group_worst_group_accuracy")
    if two_group is not None:
        metrics["two_group_worst_group_accuracy"] = two_group
    return StudyRun(run, overrides, seed, metrics, _selected(run.records), _references(run.summary), job.get("cell"),
                    run_costs(run.summary, run.path, run.records), answered_by_group(run.records))


def job_metrics(run: Run) -> dict[str, float]:
    """SubpopBench's metric set of a finished job, from its test predictions and probabilities, and written beside
    them to ``subpopulation.json``; a job folder without its predictions (as a study keeps it in git: they are
    large) reports what that file says."""
    kept = run.path / SUBPOPULATION_FILE
    if not (run.path / PREDICTIONS_FILE).is_file():
        if kept.is_file():
            return json.loads(kept.read_text())
        raise FileNotFoundError(f"{run.path} holds neither {PREDICTIONS_FILE} nor {SUBPOPULATION_FILE}: run "
                                "`fedkd report` on the study where its jobs ran, before keeping their folders without "
                                "predictions")
    pred = read_predictions(run.path)
    probabilities = read_probabilities(run.path)
    num_classes = probabilities.shape[1] if probabilities is not None else int(max(pred["y"].max(),
                                                                                   pred["pred"].max()) + 1)
    teachers = run.records[-1].get("teachers", []) if run.records else []
    counts = np.sum([t["group_counts"] for t in teachers], axis=0) if teachers else None
    metrics = subpopulation_metrics(pred["y"], pred["g"], pred["pred"], probabilities, num_classes, counts)
    text = json.dumps(metrics, indent=1) + "\n"
    if not kept.is_file() or kept.read_text() != text:
        write_text_whole(kept, text)
    return metrics


def answered_by_group(records: Sequence[dict]) -> dict[str, tuple[int, int, int]]:
    """Per group of the transfer points, summed over rounds: the queries asked, answered (a threshold refuses the
    rest: Confident GNMax) and answered with the true label; empty where no round refused a query."""
    if not any(r.get("query", {}).get("refused") for r in records):
        return {}
    out: dict[str, tuple[int, int, int]] = {}
    for record in records:
        for group, counts in record.get("query", {}).get("per_group", {}).items():
            asked, answered, correct = out.get(group, (0, 0, 0))
            out[group] = (asked + counts["asked"], answered + counts["answered"], correct + counts["correct"])
    return out


def run_costs(summary: dict, path: Path, records: Sequence[dict] = ()) -> dict[str, float]:
    """What a run spent: soft labels and uplink bytes (against FedAvg of the student), the share of its queries
    answered, privacy (each ε named for what it is) and what a membership-inference audit saw (``fedkd audit``),
    run time."""
    out = {}
    communication = summary.get("communication") or {}
    if "soft_labels_queried" in communication:
        out["soft labels / teacher"] = communication["soft_labels_queried"]
        out["uplink bytes / FedAvg's"] = communication["uplink_ratio_to_fedavg"]
    released = [r["query"] for r in records if "answered" in r.get("query", {})]
    asked = sum(q["answered"] + q.get("refused", 0) for q in released)  # this round's votes, not the pool's count
    if asked:
        out["answered / asked"] = sum(q["answered"] for q in released) / asked
    privacy = summary.get("privacy") or {}
    if summary.get("epsilon_spent") is not None:
        out["ε spent (guarantee)"] = summary["epsilon_spent"]
    if privacy.get("epsilon_data_dependent_classic") is not None:
        out["ε data-dependent, classic (not releasable)"] = privacy["epsilon_data_dependent_classic"]
    release = privacy.get("smooth_sensitivity") or {}
    if release.get("epsilon_released") is not None:
        out["ε released (smooth sensitivity)"] = release["epsilon_released"]
        out["ε released: expected"] = release["epsilon_expected"]
        out["ε released: noise std"] = release["noise_std"]
    if (path / AUDIT_FILE).is_file():
        audit = json.loads((path / AUDIT_FILE).read_text())
        out["MIA AUC, teachers"] = audit["teacher_auc"]
        out["MIA AUC, student"] = audit["student_auc"]
        if "lira" in audit:
            out["LiRA AUC, teachers"] = audit["lira"]["auc"]
            out["LiRA TPR at 0.1 % FPR"] = audit["lira"]["tpr_at_fpr_0.001"]
    if "wall_seconds" in summary:
        out[RUN_TIME] = summary["wall_seconds"]
    return out


def planned_jobs(study: StudyConfig, grid: dict, cells: dict) -> int:
    """How many jobs the study's whole grid holds (its cells' products, without the jobs of a method outside the
    seeds it is reported on): what a run of the study without command-line narrowing makes."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.fedkd_study_sweeper.study_sweeper import cell_arguments

    parser = OverridesParser.create()
    count = 0
    for name, arguments in cell_arguments({k: str(v) for k, v in grid.items()}, cells or {"grid": {}}, None, []):
        for job in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)[0]:
            overrides = dict(o.split("=", 1) for o in job)
            seed = int(overrides.pop("seed", 0))
            count += study.runs_seed(study.label(overrides, name if cells else None), seed)
    return count


def load_study(folder: Path) -> tuple[StudyConfig, list[MethodGroup], list[tuple[Path, str]], int]:
    """The study of ``folder`` (its study.yaml), its finished jobs grouped by their overrides without the seed, the
    folders left out and why, and how many jobs its whole grid holds."""
    found = read_study_file(folder)
    if found is None:
        raise FileNotFoundError(f"{folder} is not a study folder (no study.yaml): run `fedkd -m +study=<name>`")
    study, grid, cells = found
    runs, skipped = load_runs(find_run_dirs([str(folder)]))
    jobs = []
    for run in runs:
        job_path = run.path / JOB_FILE
        if not job_path.is_file():
            skipped.append((run.path, f"not a job of study {study.name} (no {JOB_FILE})"))
            continue
        jobs.append(study_run(run, yaml.safe_load(job_path.read_text())))
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    varying = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    groups: dict[tuple, MethodGroup] = {}
    for job in sorted(jobs, key=lambda j: ([j.overrides.get(k, "") for k in varying], j.seed)):
        values = {k: job.overrides[k] for k in varying if k in job.overrides}
        design = study.design_seed(job.overrides, job.seed)
        label = _label(study, job, jobs, values) + (f" {DESIGN_NOTE}" if design else "")
        groups.setdefault((*values.items(), design), MethodGroup(label, values, design=design)).runs.append(job)
    ordered = list(groups.values())
    order = list(dict.fromkeys([*cells, *(j.cell for j in jobs)]))
    ordered.sort(key=lambda g: order.index(g.runs[0].cell))  # cells in the study's order (stable within a cell)
    return study, ordered, skipped, planned_jobs(study, grid, cells)


def _label(study: StudyConfig, job: StudyRun, jobs: Sequence[StudyRun], values: dict[str, str]) -> str:
    """A group's name: its cell, with the axes that vary inside the cell; the method's value where the method is
    the only axis that varies; else every varying ``key=value``."""
    if job.cell is not None:
        mates = [j for j in jobs if j.cell == job.cell]
        inside = [k for k in job.overrides if len({j.overrides.get(k) for j in mates}) > 1]
        return " ".join([job.cell, *(f"{k}={job.overrides[k]}" for k in inside)])
    if list(values) == list(study.method):
        return study.label(values)
    return " ".join(f"{k}={v}" for k, v in values.items()) or "all runs"


def reference_of(study: StudyConfig, group: MethodGroup, groups: Sequence[MethodGroup]) -> MethodGroup | None:
    """The group of the study's reference method in ``group``'s setting (same data, same teachers); None for the
    reference itself, or where the study ran no reference in that setting."""
    overrides = group.runs[0].overrides
    if study.reference is None or study.is_reference(overrides):
        return None
    setting = study.setting_of(overrides)
    return next((g for g in groups if study.is_reference(g.runs[0].overrides) and not g.design
                 and study.setting_of(g.runs[0].overrides) == setting), None)


@dataclass(frozen=True)
class Paired:
    seeds: list[int]
    differences: list[float]
    mean: float
    low: float
    high: float


def paired(group: MethodGroup, reference: MethodGroup, metric: str) -> Paired | None:
    """Per-seed differences on the seeds both ran (and that shared teachers)."""
    return paired_values(group.by_seed(metric), reference.by_seed(metric))


def server_only_pairs(study: StudyConfig, references: dict[tuple, dict[str, dict[int, float]]],
                      group: MethodGroup) -> dict[str, dict[str, Paired]]:
    """``group`` against each model the server trains on its labeled split alone (computed once per setting and
    seed; ``references``: ``setting_references``): per model, per metric, the per-seed differences student − that
    model. Positive: the clients added something the server could not get on its own."""
    refs = references[tuple(study.setting_of(group.runs[0].overrides).items())]
    out: dict[str, dict[str, Paired]] = {}
    for name in SERVER_ONLY_MODELS:
        for metric, suffix in REFERENCE_METRIC.items():
            result = paired_values(group.by_seed(metric), refs.get(f"{name} {suffix}", {}))
            if result is not None:
                out.setdefault(name, {})[metric] = result
    return out


def paired_values(ours: dict[int, float], theirs: dict[int, float]) -> Paired | None:
    """Per-seed differences ``ours − theirs`` on the seeds both have, their mean and 95 % t interval."""
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    diffs = [ours[s] - theirs[s] for s in seeds]
    low, high = confidence_interval(diffs)
    return Paired(seeds, diffs, float(np.mean(diffs)), low, high)


def paper_rows(study: StudyConfig, groups: Sequence[MethodGroup]
               ) -> list[tuple[str, float, list[float], MethodGroup | None]]:
    """Each paper number with ours: the values per seed of the group whose overrides match its ``where`` and whose
    method is the one ``where`` names (no other method axis set: AE-KD's defaults, not a variant of it), and that
    group; or, for a reference row, that reference's values in the setting ``where`` names (no group)."""
    references = setting_references(study, groups) if any(row.reference for row in study.paper) else {}
    out = []
    for row in study.paper:
        where = {k: str(v) for k, v in row.where.items()}
        text = " ".join(f"{k}={v}" for k, v in where.items())
        if row.reference:
            key = f"{row.reference} {REFERENCE_METRIC.get(study.paper_metric, study.paper_metric)}"
            settings = [(len(items), refs) for items, refs in references.items()
                        if all(dict(items).get(k) == v for k, v in where.items())]
            setting = min(settings, key=lambda s: s[0])[1] if settings else {}  # the setting ``where`` names
            out.append((f"{text} ({row.reference})", row.value, list(setting.get(key, {}).values()), None))
            continue
        match = next((g for g in groups if not g.design and all(g.runs[0].overrides.get(k) == v
                                                                for k, v in where.items())
                      and set(study.method_of(g.runs[0].overrides)) <= set(where)), None)
        out.append((text, row.value, list(match.by_seed(study.paper_metric).values()) if match else [], match))
    return out
