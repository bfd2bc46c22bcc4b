"""``fedkd report studies/<name>``: a study's jobs as one report. Methods are named by the values the user swept
(``agre_fed``, not the registry key ``agre``); each figure is the mean over seeds with the sample standard deviation
and a 95 % confidence interval; each method is paired with the study's reference seed by seed (the two ran on the
same trained teachers); the subpopulation-shift metrics, the model-selection variants, the references that decide
whether federation helps, and the paper's numbers with the gap. Markdown, CSV and PNG.
"""

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedkd.results import write_text_whole
from fedkd.run_groups import mean_std
from fedkd.study import Curve, StudyConfig
from fedkd.study_groups import group_change_lines
from fedkd.study_runs import (
    HEADLINE,
    REFERENCE_METRIC,
    RUN_TIME,
    SELECTIONS,
    SUBPOPULATION,
    MethodGroup,
    Paired,
    confidence_interval,
    load_study,
    paired,
    paper_rows,
    reference_of,
    server_only_pairs,
    setting_references,
)

STATS_NOTE = ("mean ± sample standard deviation (ddof=1) over seeds, then the 95 % confidence interval of the mean "
              "(Student t, n − 1 degrees of freedom, clipped to [0, 1], where every metric lies; none for one seed)")
PAIRED_NOTE = ("paired: the per-seed difference method − reference on the same seeds (same data, same trained "
               "teachers), its mean and 95 % t interval")
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


def _provenance_lines(study: StudyConfig, groups: Sequence[MethodGroup], planned: int) -> list[str]:
    runs = [r for g in groups for r in g.runs]
    provenances = [r.run.summary.get("provenance") for r in runs]
    known = [p for p in provenances if p]
    commits = sorted({p["commit"][:10] for p in known})
    dirty = any(p.get("uncommitted_code_changes") for p in known)
    cpus = sorted({p["machine"]["cpu"] for p in known})
    dates = sorted(p["date"] for p in known)
    hours = sum(r.run.summary.get("wall_seconds", 0.0) for r in runs) / 3600
    lines = [f"{len(runs)} runs in {len(groups)} groups, {hours:.2f} h of run time; the study's whole grid holds "
             f"{planned} jobs."]
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


def markdown(study: StudyConfig, groups: Sequence[MethodGroup], skipped: Sequence[tuple[Path, str]],
             planned: int) -> str:
    """report.md."""
    counts = {len(r.run.summary["test"].get("per_group_accuracy", {})) for g in groups for r in g.runs}
    num_groups = counts.pop() if len(counts) == 1 else "all"  # datasets of different group counts: no one number
    title = {k: v.format(groups=num_groups) for k, v in TITLES.items()}
    reference = study.reference_text()
    lines = [f"# Study `{study.name}`", "", *_provenance_lines(study, groups, planned), "",
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
    if study.curve is not None:
        lines += [f"![{', '.join(HEADLINE[:2])} against {study.curve.x}](curve.png)", ""]
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
                  *_table(["group", "metric", "per seed", "mean [95 % CI]"], rows), "",
                  *group_change_lines(study, groups)]
    references = setting_references(study, groups)
    rows = [[f"`{g.label}`", f"`{name}`", *(_paired_cell(by_metric.get(m)) for m in REFERENCE_METRIC)]
            for g in groups for name, by_metric in server_only_pairs(study, references, g).items()]
    if rows:
        lines += ["## Against the server-only model (trained on the server's labeled split alone)", "",
                  "paired: the per-seed difference student − that model on the same seeds and labeled split, "
                  "its mean and 95 % t interval; positive where the clients add what the server cannot get alone.",
                  "", *_table(["group", "server-only model", *(title[m] for m in REFERENCE_METRIC)], rows), ""]
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
        for setting, by_seed in references.items():
            label = " ".join(f"{k}={v}" for k, v in setting) or "every job"
            rows.append([f"`{label}`", *(_cell(list(by_seed.get(n, {}).values())) for n in names)])
        lines += ["## References (the teachers, their ensemble; the server-only model; centralized = NON-FEDERATED)",
                  "", "Per setting (the teachers and data every method of it shares), over its seeds.", "",
                  *_table(["setting", *names], rows), ""]
    names = list(dict.fromkeys(k for g in groups for r in g.runs for k in r.costs))
    if names:
        lines += ["## Cost and privacy (mean ± sample std over seeds; MIA: `fedkd audit`, 0.5 = nothing seen)", "",
                  *_table(["group", *names], [[f"`{g.label}`", *(_spread([r.costs[n] for r in g.runs if n in r.costs])
                                                                for n in names)] for g in groups]), ""]
    lines += answered_lines(groups)
    if study.paper:
        rows, not_run = [], 0
        for where, value, ours, _ in paper_rows(study, groups):
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


def answered_lines(groups: Sequence[MethodGroup]) -> list[str]:
    """Who a threshold refuses (Confident GNMax): per group of the transfer points, the share of its queries
    answered and of the answers that are its true label, the counts pooled over the method's seeds; one table per
    set of groups (a dataset)."""
    tables: dict[tuple[str, ...], list[MethodGroup]] = {}
    for g in groups:
        names = tuple(sorted({k for r in g.runs for k in r.answered}))
        if names:
            tables.setdefault(names, []).append(g)
    if not tables:
        return []
    lines = ["## Queries answered, per group (the threshold refuses the rest)", "",
             "Per group of the queried transfer points, counts pooled over the method's seeds: the share of its "
             "queries answered · the share of those answers that are its true label (– where none was asked or "
             "answered).", ""]
    for names, refusing in tables.items():
        rows = []
        for g in refusing:
            cells = []
            for name in names:
                asked, answered, correct = (sum(r.answered[name][i] for r in g.runs if name in r.answered)
                                            for i in range(3))
                cells.append("–" if not asked else f"{answered / asked:.2f} · " + (f"{correct / answered:.2f}"
                                                                                    if answered else "–"))
            rows.append([f"`{g.label}`", *cells])
        lines += [*_table(["group", *names], rows), ""]
    return lines


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
    paper = {id(m): v for _, v, _, m in paper_rows(study, groups) if m is not None}
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


def curve_x(curve: Curve, group: MethodGroup) -> float | None:
    """The group's position on the curve's x: its value of the axis, or the mean of the cost; None without one."""
    if curve.x in group.runs[0].overrides:
        try:
            return float(group.runs[0].overrides[curve.x])
        except ValueError:
            return None
    costs = [r.costs[curve.x] for r in group.runs if curve.x in r.costs]
    return float(np.mean(costs)) if costs else None


def plot_curve(study: StudyConfig, groups: Sequence[MethodGroup], path: Path) -> None:
    """Each headline metric against ``study.curve.x``: per series the mean with its 95 % CI (clipped to [0, 1]);
    groups without an x as a dashed level of their series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = study.curve

    def values(g: MethodGroup, keys: list[str]) -> tuple[str, ...]:
        return tuple(f"{k}={g.runs[0].overrides[k]}" for k in keys if k in g.runs[0].overrides)

    metrics = [m for m in ("accuracy", "worst_group_accuracy") if any(g.by_seed(m) for g in groups)]
    panels = list(dict.fromkeys(values(g, curve.panels) for g in groups))
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(5 * len(panels), 3.6 * len(metrics)), squeeze=False)
    for col, panel in enumerate(panels):
        members = [g for g in groups if values(g, curve.panels) == panel]
        series = list(dict.fromkeys(values(g, curve.series) for g in members))
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            for i, name in enumerate(series):
                points, levels = [], []
                for g in members:
                    if values(g, curve.series) != name or not g.by_seed(metric):
                        continue
                    scores = list(g.by_seed(metric).values())
                    x = curve_x(curve, g)
                    (levels if x is None else points).append((x, float(np.mean(scores)),
                                                               *confidence_interval(scores)))
                label = " ".join(name) or "all"
                if points:
                    points.sort()
                    xs, means = [p[0] for p in points], [p[1] for p in points]
                    low = [m - max(p[2], 0.0) if not math.isnan(p[2]) else 0.0 for m, p in zip(means, points,
                                                                                             strict=True)]
                    high = [min(p[3], 1.0) - m if not math.isnan(p[3]) else 0.0 for m, p in zip(means, points,
                                                                                              strict=True)]
                    ax.errorbar(xs, means, yerr=[low, high], marker="o", capsize=3, color=f"C{i}", label=label)
                for level in levels:
                    ax.axhline(level[1], color=f"C{i}", linestyle="--", label=f"{label} (no {curve.x})")
            if curve.log_x:
                ax.set_xscale("log")
            ax.set_xlabel(curve.x)
            ax.set_ylabel(TITLES[metric].format(groups="all"))
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(" ".join(panel) or study.name, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"study {study.name}: mean and 95 % CI (clipped to [0, 1]) over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_study_report(folder: Path, out: Path) -> tuple[list[MethodGroup], list[Path]]:
    """report.md, report.csv and report.png of the study in ``folder``, written to ``out``."""
    study, groups, skipped, planned = load_study(folder)
    if not groups:
        raise FileNotFoundError(f"no finished job of study {study.name} under {folder}")
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "report.csv", out / "report.png"]
    files[0].write_text(markdown(study, groups, skipped, planned))
    write_csv(groups, files[1])
    plot(study, groups, files[2])
    if study.curve is not None:
        files.append(out / "curve.png")
        plot_curve(study, groups, files[-1])
    return groups, files


SUMMARY_SECTIONS = ("Final students", "Against the server-only model", "References", "Cost and privacy",
                    "Queries answered", "The paper")


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
             f"![{name}]({where}/report.png)", "",
             *(f"### {s.strip()}\n".replace("](curve.png)", f"]({where}/curve.png)") for s in keep)]
    begin, end = f"<!-- study:{name}:begin -->", f"<!-- study:{name}:end -->"
    section = "\n".join([begin, *lines, end])
    old = results.read_text() if results.exists() else "# Results\n"
    if begin in old:
        head, rest = old.split(begin, 1)
        new = head + section + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    write_text_whole(results, new)


