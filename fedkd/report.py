"""``fedkd report <dir or glob> ... [--out DIR]``: collect finished runs into one table and the plots they allow.

Runs are grouped by the config values that differ between them (config.yaml flattened to dotted keys; the seed,
the run name and path-like keys never define a group), so a sweep over ``aggregator=mean,agre seed=0,1,2`` gives
two groups of three seeds without the user naming anything. Every number comes from the runs' own files:
summary.json for the final student, metrics.jsonl for the per-round curves and AGRE-KD's teacher weights.
Plain functions, no Flower import: reading results must not need the simulation stack.
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import re
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedkd.results import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_metrics, read_summary

EXCLUDED_KEYS = frozenset({"seed", "name", "runs_dir", "resume"})
PATH_LIKE = re.compile(r"(^|_)(dir|root|path|file)s?$")
BUDGET_KEYS = frozenset({"query.per_round", "query.total"})
PRIVACY_SWEEP_KEYS = frozenset({"privacy.epsilon", "privacy.noise_multiplier"})
BETA_KEY = "student.beta"
FLOAT_NOISE = 1e-12  # a relative std below this is rounding, not spread
NO_STD = "—"  # the std column of a group with one run: a sample std needs two
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # lines of a sweep plot stay apart where they overlap
MAX_VALUE_TICKS = 8  # a log axis labels each plotted value up to this many
LEGEND_CHARS_PER_INCH = 12  # characters of legend text (9 pt) per inch of figure width
LEGEND_LINE_INCHES = 0.25
TICK_CHARS_PER_INCH = 10  # characters of tick labels (10 pt) per inch
ANNOTATE_CELLS = 15  # heatmaps with at most this many rows and columns show their values in the cells


@dataclass(frozen=True)
class Run:
    """One finished run directory: its resolved config, summary.json and metrics.jsonl records."""

    path: Path
    config: dict
    summary: dict
    records: list[dict]

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


@dataclass(frozen=True)
class Metric:
    """A column of the table: how to read it from summary.json and how to print it."""

    key: str
    title: str
    fmt: str
    read: Callable[[dict], float | None]


METRICS = (
    Metric("accuracy", "accuracy", ".4f", lambda s: s["test"]["accuracy"]),
    Metric("worst_group_accuracy", "WGA", ".4f", lambda s: s["test"]["worst_group_accuracy"]),
    Metric("mean_group_accuracy", "mean-group acc.", ".4f", lambda s: s["test"].get("mean_group_accuracy")),
    Metric("epsilon_spent", "ε spent", ".3g", lambda s: s.get("epsilon_spent")),
    Metric("soft_labels_queried", "soft labels", ".0f",
           lambda s: s.get("communication", {}).get("soft_labels_queried")),
    Metric("uplink_ratio_to_fedavg", "uplink / FedAvg", ".3g",
           lambda s: s.get("communication", {}).get("uplink_ratio_to_fedavg")),
)
METRIC = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Group:
    """Runs that share every grouping value (typically the seeds of one method)."""

    overrides: dict[str, Any]
    runs: list[Run]

    @property
    def label(self) -> str:
        return override_label(self.overrides)

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    def values(self, metric: str) -> list[float]:
        """The metric of every run that has it (ε is None without privacy)."""
        read = METRIC[metric].read
        return [float(v) for r in self.runs if (v := read(r.summary)) is not None]


@dataclass(frozen=True)
class Report:
    """What ``build_report`` found and wrote."""

    groups: list[Group]
    skipped: list[tuple[Path, str]]
    files: list[Path]


# --- collecting runs ------------------------------------------------------------------------------------------


def find_run_dirs(patterns: Sequence[str]) -> list[Path]:
    """Every run directory at or under the given directories or globs (recursively: ``runs/<date>/<time>_<name>/``
    and Hydra multirun folders alike), once each, in path order."""
    found: dict[Path, Path] = {}
    for pattern in patterns:
        roots = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
        for root in map(Path, roots):
            configs = [root] if root.name == CONFIG_FILE else (sorted(root.rglob(CONFIG_FILE)) if root.is_dir() else [])
            for config in configs:
                if _is_run_config(config):
                    found.setdefault(config.parent.resolve(), config.parent)
    return sorted(found.values())


def _is_run_config(path: Path) -> bool:
    """A resolved fedkd config (what a run writes), not a Hydra source file like conf/config.yaml, which has
    ``defaults`` and no sections filled in."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "defaults" not in data and "seed" in data and "federation" in data


def load_runs(run_dirs: Iterable[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The finished runs, and the others with the reason they were skipped (a killed or running run has no
    summary.json; its partial numbers would bias the means)."""
    runs, skipped = [], []
    for path in run_dirs:
        if not (path / SUMMARY_FILE).is_file():
            skipped.append((path, f"incomplete: no {SUMMARY_FILE} (killed, or still running)"))
            continue
        try:
            config = yaml.safe_load((path / CONFIG_FILE).read_text())
            summary = read_summary(path)
            records = read_metrics(path) if (path / METRICS_FILE).is_file() else []
        except (OSError, ValueError, yaml.YAMLError) as err:
            skipped.append((path, f"unreadable: {err}"))
            continue
        runs.append(Run(path, config, summary, records))
    return runs, skipped


# --- grouping ---------------------------------------------------------------------------------------------------


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become tuples so that values can key a group."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = tuple(value) if isinstance(value, list) else value
    return flat


def is_grouping_key(key: str) -> bool:
    """Seeds are what a group averages over; names and paths differ between any two runs and say nothing."""
    return key not in EXCLUDED_KEYS and not PATH_LIKE.search(key.rsplit(".", 1)[-1])


def varying_keys(flat_configs: Sequence[dict[str, Any]]) -> list[str]:
    """The grouping keys whose values are not the same in every config (a key missing from some is varying)."""
    keys = sorted({k for flat in flat_configs for k in flat}, key=_key_order)
    return [k for k in keys if is_grouping_key(k) and len({repr(flat.get(k)) for flat in flat_configs}) > 1]


def _key_order(key: str) -> tuple[str, bool, str]:
    """By section, the section's choice (``aggregator.name``) first: labels then read ``aggregator=agre
    aggregator.biased=mean_bases``, as one would type them."""
    return key.split(".", 1)[0], not key.endswith(".name"), key


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by the values of the varying keys, groups in the order of those values."""
    flats = [flatten(r.config) for r in runs]
    keys = varying_keys(flats)
    buckets: dict[tuple, list[Run]] = {}
    for run, flat in zip(runs, flats, strict=True):
        buckets.setdefault(tuple(flat.get(k) for k in keys), []).append(run)
    ordered = sorted(buckets.items(), key=lambda item: [_sort_value(v) for v in item[0]])
    return [Group(dict(zip(keys, values, strict=True)), sorted(members, key=lambda r: (_sort_value(r.seed), r.path)))
            for values, members in ordered]


def _sort_value(value: Any) -> tuple[int, float, str]:
    """Numbers in numeric order, then everything else by text; None first."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def override_label(overrides: dict[str, Any]) -> str:
    """Hydra override syntax, as the user would type it: ``aggregator=agre student.beta=0.5``."""
    if not overrides:
        return "all runs"
    return " ".join(f"{_override_key(k)}={_format_value(v)}" for k, v in overrides.items())


def _override_key(key: str) -> str:
    """``aggregator.name`` is the config group choice ``aggregator``."""
    return key[: -len(".name")] if key.endswith(".name") else key


def _format_value(value: Any) -> str:
    """A config value as it reads in an override: null, true, 0.5."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def curves(groups: Sequence[Group], swept: Iterable[str]) -> dict[str, list[Group]]:
    """Groups that differ only in the ``swept`` keys, by the label of their other overrides: the lines of a sweep
    plot (one line per query strategy, per privacy mechanism, per β curve)."""
    swept = set(swept)
    lines: dict[str, list[Group]] = {}
    for group in groups:
        rest = {k: v for k, v in group.overrides.items() if k not in swept}
        lines.setdefault(override_label(rest), []).append(group)
    return lines


def beta_curves(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """The robust-KD trade-off curves: groups that differ only in student.beta, ordered by beta (lines of one
    point are no curve and are left out)."""
    if not any(BETA_KEY in g.overrides for g in groups):
        return {}
    lines = curves(groups, {BETA_KEY})
    return {label: sorted(members, key=lambda g: _sort_value(g.overrides[BETA_KEY]))
            for label, members in lines.items() if len(members) > 1}


# --- the table --------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1); the std is NaN for one value (no spread to estimate), both NaN for none."""
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def table_metrics(groups: Sequence[Group]) -> list[Metric]:
    """The metrics that at least one run has (ε only with privacy on)."""
    return [m for m in METRICS if any(g.values(m.key) for g in groups)]


def format_cell(values: Sequence[float], fmt: str) -> str:
    """``mean ± std`` for the printed and Markdown tables; ``mean ± —`` for one run, ``–`` for none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    if std < FLOAT_NOISE * abs(mean):
        std = 0.0  # equal values whose mean was rounded: 1e-17 is no spread
    return f"{mean:{fmt}} ± {NO_STD if math.isnan(std) else format(std, fmt)}"


def table_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One row per group: the grouping values, n, seeds, and mean and std of every metric (NaN std when n = 1)."""
    rows = []
    for group in groups:
        row: dict[str, Any] = {"group": group.label, **group.overrides, "n": len(group.runs),
                               "seeds": " ".join(map(str, group.seeds))}
        for metric in table_metrics(groups):
            row[f"{metric.key}_mean"], row[f"{metric.key}_std"] = mean_std(group.values(metric.key))
        rows.append(row)
    return rows


TABLE_NOTE = (f"mean ± sample std (ddof=1) over the runs of a group; {NO_STD} = one run (no std); WGA = worst-group "
              "accuracy; soft labels = soft labels queried per teacher over the run; uplink / FedAvg = uplink bytes "
              "over FedAvg's")


def rich_table(groups: Sequence[Group]) -> Table:
    """The table printed to the terminal (same cells as report.md)."""
    table = Table(title="fedkd report: final students", caption=TABLE_NOTE)
    table.add_column("group", overflow="fold")
    table.add_column("n", justify="right")
    table.add_column("seeds")
    metrics = table_metrics(groups)
    for metric in metrics:
        table.add_column(metric.title, justify="right")
    for group in groups:
        table.add_row(escape(group.label), str(len(group.runs)), " ".join(map(str, group.seeds)),
                      *(format_cell(group.values(m.key), m.fmt) for m in metrics))
    return table


def write_csv(groups: Sequence[Group], path: Path) -> None:
    """Full-precision numbers for other tools; an empty std cell where n = 1."""
    rows = table_rows(groups)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else _csv_value(v)
                             for k, v in row.items()})


def _csv_value(value: Any) -> Any:
    """Config values as written in an override (null, true, (1, 2)); numbers and text as they are."""
    return _format_value(value) if isinstance(value, bool | tuple) or value is None else value


def write_markdown(groups: Sequence[Group], skipped: Sequence[tuple[Path, str]], path: Path) -> None:
    """report.md: the table to paste into notes or docs, and which runs were left out and why."""
    metrics = table_metrics(groups)
    header = ["group", "n", "seeds", *(m.title for m in metrics)]
    lines = ["# fedkd report", "", TABLE_NOTE + ".", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for group in groups:
        cells = [f"`{group.label}`", str(len(group.runs)), " ".join(map(str, group.seeds)),
                 *(format_cell(group.values(m.key), m.fmt) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", "Skipped runs:", "", *(f"- `{path}`: {reason}" for path, reason in skipped)]
    path.write_text("\n".join(lines) + "\n")


# --- plots ------------------------------------------------------------------------------------------------------


def _colour(index: int) -> Any:
    """One colour per group, the same in every plot: tab10, then tab20's light shades of those ten."""
    if index < 10:
        return matplotlib.colormaps["tab10"](index)
    return matplotlib.colormaps["tab20"]((2 * (index - 10) + 1) % 20)


def _save(fig: Figure, path: Path, files: list[Path]) -> None:
    fig.savefig(path, dpi=120)
    files.append(path)


def _legend(fig: Figure, ax: Axes, entries: int, inside: bool = True) -> None:
    """Inside the axes when short, below the plot when long or when ``inside`` is False (bar plots have no free
    corner): long labels would cover the data. Below the plot, as many columns as the longest label allows,
    labels wider than the figure wrapped so that none is cut off, and the figure taller by the legend's height."""
    if inside and entries <= 4:
        ax.legend(loc="best")
        return
    handles, labels = ax.get_legend_handles_labels()
    chars = int(fig.get_figwidth() * LEGEND_CHARS_PER_INCH) - 6
    ncols = max(1, min(3, chars // (max(map(len, labels)) + 6)))
    labels = [textwrap.fill(label, chars) for label in labels]
    lines = math.ceil(len(labels) / ncols) * max(label.count("\n") + 1 for label in labels)
    fig.set_figheight(fig.get_figheight() + LEGEND_LINE_INCHES * lines)  # the plot keeps its height
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols)


def _round_series(group: Group, key: str) -> tuple[list[int], np.ndarray]:
    """Rounds every run of the group logged, and the metric per run and round [runs, rounds]."""
    by_run = [{r["round"]: r["test"][key] for r in run.records} for run in group.runs]
    rounds = sorted(set.intersection(*(set(d) for d in by_run))) if by_run else []
    return rounds, np.array([[d[r] for r in rounds] for d in by_run], dtype=float)


def plot_rounds(groups: Sequence[Group], path: Path, files: list[Path]) -> None:
    """Accuracy and worst-group accuracy per round: whether a method is still learning, and how noisy it is."""
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, key, name in zip(axes, ("accuracy", "worst_group_accuracy"), ("accuracy", "worst-group accuracy"),
                             strict=True):
        for i, group in enumerate(groups):
            rounds, values = _round_series(group, key)
            if not rounds:
                continue
            mean = values.mean(0)
            ax.plot(rounds, mean, marker="o", color=_colour(i), label=f"{group.label} (n={len(group.runs)})")
            if len(values) > 1:
                std = values.std(0, ddof=1)
                ax.fill_between(rounds, mean - std, mean + std, color=_colour(i), alpha=0.2)
        ax.set_title(f"student test {name}")
        ax.set_xlabel("round")
        ax.set_ylabel(f"test {name} (fraction)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle("Per round: mean over seeds, band = ± 1 sample std")
    _legend(fig, axes[0], len(groups))
    _save(fig, path, files)


def _per_group(run: Run) -> dict[str, float]:
    """Final per-group test accuracy (empty for a summary without it)."""
    return run.summary["test"].get("per_group_accuracy", {})


def plot_group_bars(groups: Sequence[Group], path: Path, files: list[Path]) -> None:
    """Per-group accuracy of the final students: which groups a method gives up (WGA names only the worst)."""
    names = list(dict.fromkeys(n for g in groups for r in g.runs for n in _per_group(r)))
    width = 0.8 / len(groups)
    fig = Figure(figsize=(min(max(8.0, 2 + 0.22 * len(names) * (len(groups) + 1)), 30.0), 5.5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    for i, group in enumerate(groups):
        stats = [mean_std([_per_group(r)[n] for r in group.runs if n in _per_group(r)]) for n in names]
        means = np.array([s[0] for s in stats])
        stds = np.nan_to_num(np.array([s[1] for s in stats]))
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds if len(group.runs) > 1 else None, capsize=2,
               color=_colour(i), label=f"{group.label} (n={len(group.runs)})")
    if sum(len(n) + 2 for n in names) > fig.get_figwidth() * TICK_CHARS_PER_INCH:  # they would run together
        ax.set_xticks(x, names, rotation=45, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(x, names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("test group")
    ax.set_ylabel("test accuracy (fraction)")
    fig.suptitle("Per-group test accuracy of the final students\n(mean over seeds, error bar = ± 1 sample std)")
    ax.grid(axis="y", alpha=0.3)
    _legend(fig, ax, len(groups), inside=False)
    _save(fig, path, files)


def _point(group: Group, key: str) -> tuple[float, float]:
    """Mean and std (0 for one run, so that error bars can be drawn) of one metric."""
    mean, std = mean_std(group.values(key))
    return mean, 0.0 if math.isnan(std) else std


def plot_pareto(groups: Sequence[Group], path: Path, files: list[Path]) -> None:
    """Accuracy against worst-group accuracy: the trade-off robust methods make; a β sweep of robust KD is drawn
    as a curve so that its trade-off reads as one."""
    fig = Figure(figsize=(8, 6.5), layout="constrained")
    ax = fig.subplots()
    for i, group in enumerate(groups):
        (acc, acc_std), (wga, wga_std) = _point(group, "accuracy"), _point(group, "worst_group_accuracy")
        ax.errorbar(acc, wga, xerr=acc_std, yerr=wga_std, fmt="o", markersize=7, capsize=3, color=_colour(i),
                    label=f"{group.label} (n={len(group.runs)})")
    ax.margins(0.1)  # room for the β labels at the ends of a curve
    for label, members in beta_curves(groups).items():
        points = [(_point(g, "accuracy")[0], _point(g, "worst_group_accuracy")[0]) for g in members]
        ax.plot(*zip(*points, strict=True), color="0.35", linestyle="--", zorder=0,
                label=f"β curve ({label}), by β" if label != "all runs" else "β curve, by β")
        for (acc, wga), group in zip(points, members, strict=True):
            ax.annotate(f"β={_format_value(group.overrides[BETA_KEY])}", (acc, wga), textcoords="offset points",
                        xytext=(6, 6), fontsize=9)
    ax.set_xlabel("test accuracy (fraction)")
    ax.set_ylabel("worst-group test accuracy (fraction)")
    ax.set_title("Accuracy vs worst-group accuracy (mean ± 1 sample std over seeds)")
    ax.grid(alpha=0.3)
    _legend(fig, ax, len(ax.get_legend_handles_labels()[1]))
    _save(fig, path, files)


def agre_weights(run: Run) -> dict[tuple[int, int], float]:
    """(partition id, round) -> the mean normalised weight AGRE-KD gave that teacher in that round
    (aggregator_stats["mean_weight_per_teacher"], rows in the order of record["participants"])."""
    cells = {}
    for record in run.records:
        weights = record.get("aggregator_stats", {}).get("mean_weight_per_teacher")
        if weights is None:
            continue
        clients = record.get("participants") or list(range(len(weights)))
        cells.update({(int(c), int(record["round"])): float(w) for c, w in zip(clients, weights, strict=True)})
    return cells


def agre_weight_matrix(group: Group) -> tuple[list[int], list[int], np.ndarray]:
    """Partition ids, rounds, and the teacher weights [client, round] averaged over the group's runs (NaN where a
    client answered in no run: it had dropped out)."""
    per_run = [w for w in map(agre_weights, group.runs) if w]
    clients = sorted({c for w in per_run for c, _ in w})
    rounds = sorted({r for w in per_run for _, r in w})
    stack = np.array([[[w.get((c, r), np.nan) for r in rounds] for c in clients] for w in per_run])
    answered = (~np.isnan(stack)).sum(0)
    return clients, rounds, np.where(answered > 0, np.nansum(stack, axis=0) / np.maximum(answered, 1), np.nan)


def plot_agre_heatmap(group: Group, path: Path, files: list[Path]) -> None:
    """Teacher weights per client and round, mean over seeds: which clients AGRE-KD trusted, and when."""
    clients, rounds, matrix = agre_weight_matrix(group)
    fig = Figure(figsize=(min(max(6.0, 2.5 + 0.8 * len(rounds)), 18.0), min(max(3.8, 1.8 + 0.45 * len(clients)), 14.0)),
                 layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")  # grey: the client had dropped out
    image = ax.imshow(matrix, aspect="auto", cmap=cmap, vmin=0.0, vmax=float(np.nanmax(matrix)))
    fig.colorbar(image, ax=ax, label="mean normalised teacher weight")
    ax.set_xticks(range(len(rounds)), [str(r) for r in rounds])
    ax.set_yticks(range(len(clients)), [f"client {c}" for c in clients])
    ax.set_xlabel("round")
    ax.set_ylabel("teacher (partition id)")
    seeds = " ".join(str(r.seed) for r, w in zip(group.runs, map(agre_weights, group.runs), strict=True) if w)
    ax.set_title(f"AGRE-KD teacher weights: {group.label}\nmean over seeds {seeds}", fontsize=11)
    if len(rounds) <= ANNOTATE_CELLS and len(clients) <= ANNOTATE_CELLS:
        middle = float(np.nanmax(matrix)) / 2
        for (row, col), value in np.ndenumerate(matrix):
            ax.text(col, row, "dropped" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if np.isnan(value) or value > middle else "white")
    _save(fig, path, files)


def plot_sweep(groups: Sequence[Group], swept: Iterable[str], x_metric: str, xlabel: str, title: str,
               path: Path, files: list[Path], log_x: bool | None = None) -> None:
    """Accuracy and WGA against ``x_metric`` (soft labels queried, ε spent), one line per setting of the keys
    not swept; a line without that metric (privacy=none has no ε) is a horizontal reference. ``log_x`` None:
    a log axis when x spans more than a factor of 20."""
    lines = curves(groups, swept)
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    xs = sorted({x for g in groups if g.values(x_metric) and (x := _point(g, x_metric)[0]) > 0})
    for ax, key, name in zip(axes, ("accuracy", "worst_group_accuracy"), ("accuracy", "worst-group accuracy"),
                             strict=True):
        for number, (label, members) in enumerate(lines.items()):
            style = {"color": _colour(number), "marker": MARKERS[number % len(MARKERS)]}
            placed = sorted((_point(g, x_metric), _point(g, key)) for g in members if g.values(x_metric))
            if placed:
                ax.errorbar([p[0][0] for p in placed], [p[1][0] for p in placed], yerr=[p[1][1] for p in placed],
                            capsize=3, markersize=7, label=label, **style)
            for group in (g for g in members if not g.values(x_metric)):
                ax.axhline(_point(group, key)[0], color=style["color"], linestyle="--",
                           label=f"{label}: no {METRIC[x_metric].title}")
        if log_x or (log_x is None and xs and xs[-1] > 20 * xs[0]):
            _log_axis(ax, xs)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {name} (fraction)")
        ax.set_title(f"student test {name}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (mean over seeds, error bar = ± 1 sample std)")
    _legend(fig, axes[0], len(axes[0].get_legend_handles_labels()[1]))
    _save(fig, path, files)


def _log_axis(ax: Axes, xs: Sequence[float]) -> None:
    """A log x axis labelled with the plotted values in plain numbers (1, 2, 8), not 2×10⁰."""
    ax.set_xscale("log")
    if len(xs) <= MAX_VALUE_TICKS:
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _slug(text: str) -> str:
    """A file name part from a group label (``aggregator=agre`` -> ``aggregator_agre``), short enough for any disk."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "all_runs"


def _unused(path: Path, files: list[Path]) -> Path:
    """``path``, or with a numeric suffix when this report already wrote it (two labels, one slug)."""
    candidate, number = path, 1
    while candidate in files:
        number += 1
        candidate = path.with_stem(f"{path.stem}-{number}")
    return candidate


def write_plots(groups: Sequence[Group], out: Path) -> list[Path]:
    """Every plot the runs allow (see the module's ``fedkd report`` help); returns the files written."""
    files: list[Path] = []
    varying = {k for g in groups for k in g.overrides}
    with matplotlib.rc_context(STYLE):
        if any(r.records for g in groups for r in g.runs):
            plot_rounds(groups, out / "rounds.png", files)
        if any(_per_group(r) for g in groups for r in g.runs):
            plot_group_bars(groups, out / "per_group_accuracy.png", files)
        if len(groups) > 1:
            plot_pareto(groups, out / "pareto.png", files)
        for group in groups:
            if any(agre_weights(r) for r in group.runs):
                plot_agre_heatmap(group, _unused(out / f"agre_weights_{_slug(group.label)}.png", files), files)
        if varying & (BUDGET_KEYS | {"query.name"}):
            plot_sweep(groups, BUDGET_KEYS, "soft_labels_queried", "soft labels queried per teacher, whole run",
                       "Query budget", out / "query_budget.png", files)
        if "privacy.epsilon" in varying and any(g.values("epsilon_spent") for g in groups):
            plot_sweep(groups, PRIVACY_SWEEP_KEYS, "epsilon_spent", "ε spent over the run (log scale)",
                       "Privacy–utility", out / "privacy_utility.png", files, log_x=True)
    return files


# --- the command ------------------------------------------------------------------------------------------------


def default_out(patterns: Sequence[str]) -> Path:
    """``<first dir>/report`` next to the runs it describes; ``./report`` when the first argument is a glob."""
    first = Path(patterns[0])
    return first / "report" if first.is_dir() else Path("report")


def build_report(patterns: Sequence[str], out: Path, console: Console | None = None) -> Report:
    """Collect the runs, print the table, write report.csv, report.md and the plots to ``out``."""
    console = console or Console()
    runs, skipped = load_runs(find_run_dirs(patterns))
    for path, reason in skipped:
        console.print(f"[yellow]warning: skipped {escape(str(path))}: {escape(reason)}[/]", highlight=False,
                      soft_wrap=True)
    if not runs:
        raise FileNotFoundError(f"no finished run directory (with {CONFIG_FILE} and {SUMMARY_FILE}) under "
                                f"{' '.join(patterns)}")
    groups = group_runs(runs)
    console.print(rich_table(groups))
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.csv", out / "report.md"]
    write_csv(groups, files[0])
    write_markdown(groups, skipped, files[1])
    files += write_plots(groups, out)
    return Report(groups, skipped, files)


def _console() -> Console:
    """The terminal's width, but a wide table when the output goes to a file or a pipe (rich would wrap it at 80
    columns); COLUMNS still wins."""
    console = Console()
    return console if console.is_terminal or "COLUMNS" in os.environ else Console(width=160)


def main(argv: Sequence[str] | None = None) -> int:
    """``fedkd report``: the exit status (1 when no finished run was found)."""
    parser = argparse.ArgumentParser(
        prog="fedkd report",
        description="Collect finished runs into one table (mean ± std over seeds per group of runs; groups are the "
                    "config values that differ between runs, seed excluded) and plots: per round, per group, "
                    "accuracy vs worst-group accuracy, AGRE-KD teacher weights, and query-budget and "
                    "privacy-utility curves when the runs vary those.")
    parser.add_argument("runs", nargs="+", help="run directories, folders holding them (searched recursively) or "
                                                "globs, e.g. runs/2026-11-24 'runs/*/*_agre_*'")
    parser.add_argument("--out", type=Path, help="output folder (default: <first dir>/report, or ./report)")
    args = parser.parse_args(argv)
    console = _console()
    try:
        report = build_report(args.runs, args.out or default_out(args.runs), console)
    except FileNotFoundError as err:
        console.print(f"[bold red]fedkd report: {escape(str(err))}[/]", highlight=False, soft_wrap=True)
        return 1
    runs = sum(len(g.runs) for g in report.groups)
    console.print(f"fedkd report: {runs} runs in {len(report.groups)} groups ({len(report.skipped)} skipped); wrote:",
                  highlight=False)
    for path in report.files:
        console.print(f"  {escape(str(path))}", highlight=False, soft_wrap=True)
    return 0
