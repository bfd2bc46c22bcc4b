"""``fedkd report``'s plots (matplotlib, no display needed): per round, per group, accuracy against worst-group
accuracy, the teacher weights an aggregator logs (AGRE-KD's), and the query-budget and privacy-utility sweeps
when the runs vary those.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from fedkd.run_groups import BETA_KEY, METRIC, Group, Run, beta_curves, curves, format_value, mean_std

BUDGET_KEYS = frozenset({"query.per_round", "query.total"})
PRIVACY_SWEEP_KEYS = frozenset({"privacy.epsilon", "privacy.noise_multiplier"})
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # lines of a sweep plot stay apart where they overlap
MAX_VALUE_TICKS = 8  # a log axis labels each plotted value up to this many
LEGEND_CHARS_PER_INCH = 12  # characters of legend text (9 pt) per inch of figure width
LEGEND_LINE_INCHES = 0.25
TICK_CHARS_PER_INCH = 10  # characters of tick labels (10 pt) per inch
ANNOTATE_CELLS = 15  # heatmaps with at most this many rows and columns show their values in the cells


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
            ax.annotate(f"β={format_value(group.overrides[BETA_KEY])}", (acc, wga), textcoords="offset points",
                        xytext=(6, 6), fontsize=9)
    ax.set_xlabel("test accuracy (fraction)")
    ax.set_ylabel("worst-group test accuracy (fraction)")
    ax.set_title("Accuracy vs worst-group accuracy (mean ± 1 sample std over seeds)")
    ax.grid(alpha=0.3)
    _legend(fig, ax, len(ax.get_legend_handles_labels()[1]))
    _save(fig, path, files)


def teacher_weights(run: Run) -> dict[tuple[int, int], float]:
    """(partition id, round) -> the mean normalised weight the aggregator gave that teacher in that round, for an
    aggregator that logs one (aggregator_stats["mean_weight_per_teacher"], rows in the order of
    record["participants"])."""
    cells = {}
    for record in run.records:
        weights = record.get("aggregator_stats", {}).get("mean_weight_per_teacher")
        if weights is None:
            continue
        clients = record.get("participants") or list(range(len(weights)))
        cells.update({(int(c), int(record["round"])): float(w) for c, w in zip(clients, weights, strict=True)})
    return cells


def teacher_weight_matrix(group: Group) -> tuple[list[int], list[int], np.ndarray]:
    """Partition ids, rounds, and the teacher weights [client, round] averaged over the group's runs (NaN where a
    client answered in no run: it had dropped out)."""
    per_run = [w for w in map(teacher_weights, group.runs) if w]
    clients = sorted({c for w in per_run for c, _ in w})
    rounds = sorted({r for w in per_run for _, r in w})
    stack = np.array([[[w.get((c, r), np.nan) for r in rounds] for c in clients] for w in per_run])
    answered = (~np.isnan(stack)).sum(0)
    return clients, rounds, np.where(answered > 0, np.nansum(stack, axis=0) / np.maximum(answered, 1), np.nan)


def plot_teacher_weight_heatmap(group: Group, path: Path, files: list[Path]) -> None:
    """Teacher weights per client and round, mean over seeds: which clients the aggregator trusted, and when."""
    clients, rounds, matrix = teacher_weight_matrix(group)
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
    seeds = " ".join(str(r.seed) for r, w in zip(group.runs, map(teacher_weights, group.runs), strict=True) if w)
    ax.set_title(f"Teacher weights: {group.label}\nmean over seeds {seeds}", fontsize=11)
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
            if any(teacher_weights(r) for r in group.runs):
                path = _unused(out / f"teacher_weights_{_slug(group.label)}.png", files)
                plot_teacher_weight_heatmap(group, path, files)
        if varying & (BUDGET_KEYS | {"query.name"}):
            plot_sweep(groups, BUDGET_KEYS, "soft_labels_queried", "soft labels queried per teacher, whole run",
                       "Query budget", out / "query_budget.png", files)
        if "privacy.epsilon" in varying and any(g.values("epsilon_spent") for g in groups):
            plot_sweep(groups, PRIVACY_SWEEP_KEYS, "epsilon_spent", "ε spent over the run (log scale)",
                       "Privacy–utility", out / "privacy_utility.png", files, log_x=True)
    return files


