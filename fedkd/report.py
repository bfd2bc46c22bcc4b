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
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedkd.plots import teacher_weight_matrix, write_plots
from fedkd.results import CONFIG_FILE, SUMMARY_FILE
from fedkd.run_groups import (
    METRICS,
    Group,
    Metric,
    Run,
    beta_curves,
    find_run_dirs,
    flatten,
    format_value,
    group_runs,
    load_runs,
    mean_std,
    varying_keys,
)
from fedkd.study import STUDY_FILE

# the names tests and scripts import from here, wherever they live
__all__ = ["Group", "Report", "Run", "teacher_weight_matrix", "beta_curves", "build_report", "default_out",
           "find_run_dirs", "flatten", "group_runs", "main", "table_rows", "varying_keys", "write_csv",
           "write_markdown"]

FLOAT_NOISE = 1e-12  # a relative std below this is rounding, not spread
NO_STD = "—"  # the std column of a group with one run: a sample std needs two


@dataclass(frozen=True)
class Report:
    """What ``build_report`` found and wrote."""

    groups: list[Group]
    skipped: list[tuple[Path, str]]
    files: list[Path]


# --- the table --------------------------------------------------------------------------------------------------



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
    return format_value(value) if isinstance(value, bool | tuple) or value is None else value


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


def _study_main(folder: Path, out: Path | None, results: Path | None, console: Console) -> int:
    """A study folder (studies/<name>, with its study.yaml): the study's report (fedkd.study_report), and its
    section of ``results`` (docs/results.md) where asked."""
    from rich.markdown import Markdown

    from fedkd.study_report import build_study_report, write_results_section

    try:
        groups, files = build_study_report(folder, out or folder / "report")
    except FileNotFoundError as err:
        console.print(f"[bold red]fedkd report: {escape(str(err))}[/]", highlight=False, soft_wrap=True)
        return 1
    if results is not None:
        command = " ".join(["fedkd report", str(folder), *(["--out", str(out)] if out else []), "--results",
                            str(results)])
        write_results_section(results, files[0], command)
        files.append(results)
    console.print(Markdown(files[0].read_text()))
    console.print(f"fedkd report: {sum(len(g.runs) for g in groups)} jobs in {len(groups)} groups; wrote:",
                  highlight=False)
    for path in files:
        console.print(f"  {escape(str(path))}", highlight=False, soft_wrap=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``fedkd report``: the exit status (1 when no finished run was found)."""
    parser = argparse.ArgumentParser(
        prog="fedkd report",
        description="Collect finished runs into one table (mean ± sample std, ddof=1, over seeds per group of runs; "
                    "groups are the config values that differ between runs, seed excluded) and plots: per round, "
                    "per group, "
                    "accuracy vs worst-group accuracy, AGRE-KD teacher weights, and query-budget and "
                    "privacy-utility curves when the runs vary those.")
    parser.add_argument("runs", nargs="+", help="run directories, folders holding them (searched recursively) or "
                                                "globs, e.g. runs/2026-11-24 'runs/*/*_mean_*'; or one study "
                                                "folder, studies/<name>: the study's report")
    parser.add_argument("--out", type=Path, help="output folder (default: <first dir>/report, or ./report)")
    parser.add_argument("--results", type=Path, help="a study only: also replace the study's section of this "
                                                     "Markdown file (e.g. docs/results.md), keeping the others")
    args = parser.parse_args(argv)
    console = _console()
    if len(args.runs) == 1 and (Path(args.runs[0]) / STUDY_FILE).is_file():
        return _study_main(Path(args.runs[0]), args.out, args.results, console)
    if args.results is not None:
        console.print("[bold red]fedkd report: --results writes a study's section: give one study folder "
                      "(studies/<name>)[/]", highlight=False, soft_wrap=True)
        return 2
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
