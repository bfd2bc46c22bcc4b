"""``fedkd report studies/<name>``: a study's jobs as one report. Methods are named by the values the user swept
(``agre_fed``, not the registry key ``agre``); each figure is the mean over seeds with the sample standard deviation
and a 95 % confidence interval; each method is paired with the study's reference seed by seed (the two ran on the
same trained teachers); the subpopulation-shift metrics, the model-selection variants, the references that decide
whether federation helps, and the paper's numbers with the gap. Markdown, CSV and PNG.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from fedkd.results import read_predictions, read_probabilities
from fedkd.run_groups import Run, find_run_dirs, load_runs, mean_std
from fedkd.study import JOB_FILE, REFERENCE_FREE, StudyConfig, read_study_file
from fedkd.subpop_metrics import subpopulation_metrics

CONFIDENCE = 0.95
RUN_TIME = "run time (s)"
DESIGN_NOTE = "(design seeds: no evidence)"
STATS_NOTE = ("mean ± sample standard deviation (ddof=1) over seeds, then the 95 % confidence interval of the mean "
              "(Student t, n − 1 degrees of freedom, clipped to [0, 1], where every metric lies; none for one seed)")
PAIRED_NOTE = ("paired: the per-seed difference method − reference on the same seeds (same data, same trained "
               "teachers), its mean and 95 % t interval")
HEADLINE = ("accuracy", "worst_group_accuracy", "two_group_worst_group_accuracy")
SUBPOPULATION = ("mean_group_accuracy", "class_balanced_accuracy", "worst_class_accuracy", "worst_class_precision",
                 "worst_class_f1", "train_weighted_accuracy", "auroc", "ece")
TITLES = {
    "accuracy": "accuracy",
    "worst_group_accuracy": "WGA ({groups} test groups)",
    "two_group_worst_group_accuracy": "WGA (aligned / conflicting)",
    "mean_group_accuracy": "mean-group acc. (adjusted)",
    "class_balanced_accuracy": "class-balanced acc.",
    "worst_class_accuracy": "worst-class acc.",
    "worst_class_precision": "worst-class precision",
    "worst_class_f1": "worst-class F1",
    "train_weighted_accuracy": "train-weighted acc.",
    "auroc": "AUROC (one-vs-rest)",
    "ece": "ECE (10 bins)",
}
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
    for name, report in summary.get("baselines", {}).items():
        if isinstance(report, dict) and "worst_group_accuracy" in report:
            out[f"{name} accuracy"] = report["accuracy"]
            out[f"{name} WGA"] = report["worst_group_accuracy"]
    return out


def study_run(run: Run, job: dict) -> StudyRun:
    overrides = {str(k): str(v) for k, v in job["overrides"].items() if not str(k).startswith(REFERENCE_FREE)}
    seed = int(overrides.pop("seed", run.config["seed"]))
    pred = read_predictions(run.path)
    probabilities = read_probabilities(run.path)
    num_classes = probabilities.shape[1] if probabilities is not None else int(max(pred["y"].max(),
                                                                                   pred["pred"].max()) + 1)
    teachers = run.records[-1].get("teachers", []) if run.records else []
    counts = np.sum([t["group_counts"] for t in teachers], axis=0) if teachers else None
    metrics = subpopulation_metrics(pred["y"], pred["g"], pred["pred"], probabilities, num_classes, counts)
    two_group = run.summary["test"].get("two_group_worst_group_accuracy")
    if two_group is not None:
        metrics["two_group_worst_group_accuracy"] = two_group
    return StudyRun(run, overrides, seed, metrics, _selected(run.records), _references(run.summary), job.get("cell"),
                    _costs(run.summary))


def _costs(summary: dict) -> dict[str, float]:
    """What a run spent: soft labels and uplink bytes (against FedAvg of the student), privacy, run time."""
    out = {}
    communication = summary.get("communication") or {}
    if "soft_labels_queried" in communication:
        out["soft labels / teacher"] = communication["soft_labels_queried"]
        out["uplink bytes / FedAvg's"] = communication["uplink_ratio_to_fedavg"]
    if summary.get("epsilon_spent") is not None:
        out["ε spent"] = summary["epsilon_spent"]
    if "wall_seconds" in summary:
        out[RUN_TIME] = summary["wall_seconds"]
    return out


def load_study(folder: Path) -> tuple[StudyConfig, list[MethodGroup], list[tuple[Path, str]]]:
    """The study of ``folder`` (its study.yaml) and its finished jobs grouped by their overrides without the seed."""
    found = read_study_file(folder)
    if found is None:
        raise FileNotFoundError(f"{folder} is not a study folder (no study.yaml): run `fedkd -m +study=<name>`")
    study, _ = found
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
    cells = list(dict.fromkeys(j.cell for j in jobs))
    ordered.sort(key=lambda g: cells.index(g.runs[0].cell))  # cells in the study's order (stable within a cell)
    return study, ordered, skipped


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
    ours, theirs = group.by_seed(metric), reference.by_seed(metric)
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    diffs = [ours[s] - theirs[s] for s in seeds]
    low, high = confidence_interval(diffs)
    return Paired(seeds, diffs, float(np.mean(diffs)), low, high)


def paper_rows(study: StudyConfig, groups: Sequence[MethodGroup]) -> list[tuple[str, float, MethodGroup | None]]:
    """Each paper number with the group whose overrides match its ``where``, if the study ran it."""
    out = []
    for row in study.paper:
        where = {k: str(v) for k, v in row.where.items()}
        match = next((g for g in groups if all(g.runs[0].overrides.get(k) == v for k, v in where.items())), None)
        out.append((" ".join(f"{k}={v}" for k, v in where.items()), row.value, match))
    return out


def _cell(values: Sequence[float], fmt: str = ".3f") -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{mean:{fmt}}"
    low, high = confidence_interval(values)
    return f"{mean:{fmt}} ± {std:{fmt}} [{max(low, 0.0):{fmt}}, {min(high, 1.0):{fmt}}]"


def _spread(values: Sequence[float]) -> str:
    """mean ± sample std, three significant digits (a cost has no [0, 1] range to clip an interval to)."""
    def number(x: float) -> str:
        return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"

    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    return number(mean) if math.isnan(std) else f"{number(mean)} ± {number(std)}"


def _paired_cell(result: Paired | None) -> str:
    if result is None:
        return "–"
    if len(result.seeds) < 2:
        return f"{result.mean:+.3f} (1 seed)"
    return f"{result.mean:+.3f} [{result.low:+.3f}, {result.high:+.3f}] ({len(result.seeds)} seeds)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _provenance_lines(study: StudyConfig, groups: Sequence[MethodGroup]) -> list[str]:
    runs = [r for g in groups for r in g.runs]
    provenances = [r.run.summary.get("provenance") for r in runs]
    known = [p for p in provenances if p]
    commits = sorted({p["commit"][:10] for p in known})
    dirty = any(p.get("uncommitted_code_changes") for p in known)
    cpus = sorted({p["machine"]["cpu"] for p in known})
    dates = sorted(p["date"] for p in known)
    hours = sum(r.run.summary.get("wall_seconds", 0.0) for r in runs) / 3600
    lines = [f"{len(runs)} runs in {len(groups)} groups, {hours:.2f} h of run time."]
    if known:
        lines.append(f"Code: commit {', '.join(commits)}{' with uncommitted changes' if dirty else ''}; "
                     f"machine: {'; '.join(cpus)}; dates {dates[0]} to {dates[-1]}"
                     + (f"; {len(runs) - len(known)} runs without provenance" if len(known) < len(runs) else "")
                     + ".")
    commands = sorted({p["command"] for p in known})
    if commands:
        lines.append("Command(s): " + "; ".join(f"`{c}`" for c in commands) + f", then `fedkd report "
                     f"studies/{study.name}`.")
    return lines


def markdown(study: StudyConfig, groups: Sequence[MethodGroup], skipped: Sequence[tuple[Path, str]]) -> str:
    """report.md."""
    num_groups = len(groups[0].runs[0].run.summary["test"].get("per_group_accuracy", {})) if groups else 0
    title = {k: v.format(groups=num_groups) for k, v in TITLES.items()}
    reference = study.reference_text()
    lines = [f"# Study `{study.name}`", "", *_provenance_lines(study, groups), "",
             f"Each cell: {STATS_NOTE}. {PAIRED_NOTE}." + (f" Reference: `{reference}` in the same setting."
                                                         if study.reference else ""), ""]
    headline = [m for m in HEADLINE if any(g.by_seed(m) for g in groups)]
    single = len(study.method) == 1 and all(list(g.overrides) == list(study.method) and g.runs[0].cell is None
                                            for g in groups)
    header = [study.method[0] if single else "group", "n", "seeds", *(title[m] for m in headline)]
    if study.reference:
        header.append(f"paired Δ {title['worst_group_accuracy']} vs {reference}")
    rows = []
    for g in groups:
        row = [f"`{g.label}`", str(len(g.runs)), " ".join(str(r.seed) for r in g.runs),
               *(_cell(list(g.by_seed(m).values())) for m in headline)]
        if study.reference:
            ref = reference_of(study, g, groups)
            row.append(_paired_cell(paired(g, ref, "worst_group_accuracy")) if ref else "(reference)"
                       if study.is_reference(g.runs[0].overrides) else "–")
        rows.append(row)
    lines += ["## Final students", "", *_table(header, rows), ""]
    if study.reference:
        rows = []
        for g in groups:
            ref = reference_of(study, g, groups)
            if ref is None:
                continue
            for m in [*headline, *SUBPOPULATION]:
                result = paired(g, ref, m)
                if result is not None:
                    rows.append([f"`{g.label}`", title[m], " ".join(f"{d:+.3f}" for d in result.differences),
                                 _paired_cell(result)])
        lines += [f"## Paired differences against `{reference}` in the same setting", "",
                  *_table(["group", "metric", "per seed", "mean [95 % CI]"], rows), ""]
    metrics = [m for m in SUBPOPULATION if any(g.by_seed(m) for g in groups)]
    lines += ["## Subpopulation metrics (SubpopBench's set; see docs/studies.md for each definition)", "",
              *_table(["group", *(title[m] for m in metrics)],
                      [[f"`{g.label}`", *(_cell(list(g.by_seed(m).values())) for m in metrics)] for g in groups]), ""]
    lines += ["## Model selection: test WGA of the round each rule picks", "",
              *_table(["group", *SELECTIONS], [[f"`{g.label}`", *(_cell([r.selected[s] for r in g.runs
                                                                          if s in r.selected]) for s in SELECTIONS)]
                                               for g in groups]), ""]
    names = list(dict.fromkeys(k for g in groups for r in g.runs for k in r.references))
    if names:
        rows = []
        for g in groups:
            ref = reference_of(study, g, groups)
            own = [r.references for r in g.runs]
            rows.append([f"`{g.label}`", *(_cell([refs[n] for refs in own if n in refs] or [
                r.references[n] for r in (ref.runs if ref else []) if n in r.references]) for n in names)])
        lines += ["## References (the teachers, their ensemble; the server-only model; centralized = NON-FEDERATED)",
                  "", "A reference computed once per setting and seed, on the reference method's job, stands for "
                  "every method of that setting.", "", *_table(["group", *names], rows), ""]
    names = list(dict.fromkeys(k for g in groups for r in g.runs for k in r.costs))
    if names:
        lines += ["## Cost (mean ± sample std over seeds)", "",
                  *_table(["group", *names], [[f"`{g.label}`", *(_spread([r.costs[n] for r in g.runs if n in r.costs])
                                                                for n in names)] for g in groups]), ""]
    if study.paper:
        rows, not_run = [], 0
        for where, value, match in paper_rows(study, groups):
            ours = list(match.by_seed(study.paper_metric).values()) if match else []
            if not ours:
                not_run += 1
                continue
            rows.append([where, f"{value:.3f}", _cell(ours), f"{np.mean(ours) - value:+.3f}"])
        lines += [f"## The paper: {study.paper_source or ''} ({title.get(study.paper_metric, study.paper_metric)})",
                  "", *_table(["setting", "paper", "ours", "ours − paper"], rows), ""]
        if not_run:
            lines += [f"{not_run} more of the paper's numbers have no finished job here.", ""]
    if skipped:
        lines += ["Left out:", "", *(f"- `{p}`: {why}" for p, why in skipped), ""]
    return "\n".join(lines)


def write_csv(groups: Sequence[MethodGroup], path: Path) -> None:
    """One row per job: the overrides, the seed and every metric, at full precision (not the run time: the same
    jobs give the same file)."""
    jobs = [r for g in groups for r in g.runs]
    costs = [{k: v for k, v in r.costs.items() if k != RUN_TIME} for r in jobs]
    columns = ["group", *dict.fromkeys(k for r in jobs for k in r.overrides), "seed",
               *dict.fromkeys(k for r in jobs for k in r.metrics), *dict.fromkeys(k for r in jobs for k in r.selected),
               *dict.fromkeys(k for r in jobs for k in r.references), *dict.fromkeys(k for c in costs for k in c)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        labels = [g.label for g in groups for _ in g.runs]
        for label, r, cost in zip(labels, jobs, costs, strict=True):
            writer.writerow({"group": label, **r.overrides, "seed": r.seed, **r.metrics, **r.selected,
                             **r.references, **cost})


def plot(study: StudyConfig, groups: Sequence[MethodGroup], path: Path) -> None:
    """Accuracy and WGA per group, mean with its 95 % CI clipped to [0, 1] and every seed as a dot; the paper's
    numbers as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in HEADLINE if any(g.by_seed(m) for g in groups)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 + 0.6 * len(groups) * len(metrics), 3.8), squeeze=False)
    paper = {id(m): v for _, v, m in paper_rows(study, groups) if m is not None}
    for ax, metric in zip(axes[0], metrics, strict=True):
        for x, g in enumerate(groups):
            values = list(g.by_seed(metric).values())
            if not values:
                continue
            mean = float(np.mean(values))
            low, high = confidence_interval(values)
            if not math.isnan(low):
                low, high = max(low, 0.0), min(high, 1.0)
                ax.errorbar([x], [mean], yerr=[[mean - low], [high - mean]], fmt="o", color="C0", capsize=4)
            else:
                ax.plot([x], [mean], "o", color="C0")
            ax.plot([x] * len(values), values, ".", color="0.5", alpha=0.7)
            if metric == study.paper_metric and id(g) in paper:
                ax.plot([x], [paper[id(g)]], "x", color="C3", markersize=9)
        ax.set_xticks(range(len(groups)), [g.label for g in groups], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(TITLES[metric].format(groups="all"), fontsize=9)
    fig.suptitle(f"study {study.name}: mean, 95 % CI (clipped to [0, 1]), seeds as dots"
                 + ("; × = the paper" if paper else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_study_report(folder: Path, out: Path) -> tuple[list[MethodGroup], list[Path]]:
    """report.md, report.csv and report.png of the study in ``folder``, written to ``out``."""
    study, groups, skipped = load_study(folder)
    if not groups:
        raise FileNotFoundError(f"no finished job of study {study.name} under {folder}")
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "report.csv", out / "report.png"]
    files[0].write_text(markdown(study, groups, skipped))
    write_csv(groups, files[1])
    plot(study, groups, files[2])
    return groups, files


SUMMARY_SECTIONS = ("Final students", "References", "Cost", "The paper")


def write_results_section(results: Path, report_md: Path, command: str) -> None:
    """Replace the study's section of ``results`` (docs/results.md: between ``<!-- study:<name>:begin -->`` and
    ``<!-- study:<name>:end -->``, appended when absent, every other section kept) with the report's headline
    sections, the command that wrote them and links to the whole report and its plot."""
    import os

    text = report_md.read_text()
    title, _, body = text.partition("\n")
    name = title.removeprefix("# Study ").strip("`")
    intro, *sections = body.split("\n## ")
    keep = [s for s in sections if s.startswith(SUMMARY_SECTIONS)]
    where = Path(os.path.relpath(report_md.parent, results.parent)).as_posix()
    lines = [f"## Study `{name}`", "", f"Generated by `{command}`; the whole report (paired differences, "
             f"subpopulation metrics, model selection): [{where}/report.md]({where}/report.md), every job's "
             f"numbers: [{where}/report.csv]({where}/report.csv).", "", intro.strip(), "",
             f"![{name}]({where}/report.png)", "", *(f"### {s.strip()}\n" for s in keep)]
    begin, end = f"<!-- study:{name}:begin -->", f"<!-- study:{name}:end -->"
    section = "\n".join([begin, *lines, end])
    old = results.read_text() if results.exists() else "# Results\n"
    if begin in old:
        head, rest = old.split(begin, 1)
        new = head + section + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    tmp = results.with_name(f".{results.name}.tmp")
    tmp.write_text(new)
    tmp.replace(results)


def describe(groups: Sequence[MethodGroup]) -> dict[str, Any]:
    """The numbers a caller compares (tests, a bench): per group label, per seed, the headline metrics."""
    return {g.label: {r.seed: {m: r.metrics.get(m) for m in HEADLINE} for r in g.runs} for g in groups}
