"""Terminal display with rich: live progress (round, phase, clients answered) and the final summary table."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


class RunDisplay:
    """Progress of a federated distillation run; one line per finished round stays on screen."""

    def __init__(self, num_rounds: int, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]round {task.fields[round]}/{task.total}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[phase]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task("run", total=num_rounds, round=1, phase="starting")

    def __enter__(self) -> RunDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def phase(self, server_round: int, phase: str, answered: int | None = None, expected: int | None = None) -> None:
        text = phase if answered is None else f"{phase} · {answered}/{expected} clients answered"
        self.progress.update(self.task, round=server_round, phase=text)

    def resume_at(self, completed_rounds: int) -> None:
        self.progress.update(self.task, completed=completed_rounds, round=completed_rounds + 1, phase="resuming")
        self.progress.console.print(f"resuming after round {completed_rounds}", highlight=False)

    def round_done(self, record: dict) -> None:
        test = record["test"]
        self.progress.advance(self.task)
        self.progress.console.print(
            f"round {record['round']} | student acc {test['accuracy']:.3f} wga {test['worst_group_accuracy']:.3f} | "
            f"teachers acc {record['teacher_mean_accuracy']:.3f} wga {record['teacher_mean_worst_group_accuracy']:.3f}"
            f" | {record['wall_seconds']:.1f} s",
            highlight=False,
        )


def summary_table(summary: dict) -> Table:
    """The final table: student mean / worst-group / per-group accuracy, teachers, run directory."""
    test, teachers = summary["test"], summary["teachers"]
    table = Table(title=f"fedkd · {summary['dataset']} · aggregator {summary['aggregator']}", show_lines=False)
    table.add_column("metric")
    table.add_column("value", justify="right", overflow="fold")
    table.add_row("student accuracy", f"{test['accuracy']:.4f}")
    table.add_row("student worst-group accuracy", f"{test['worst_group_accuracy']:.4f} ({test['worst_group']})")
    table.add_row("student mean-group accuracy", f"{test['mean_group_accuracy']:.4f}")
    table.add_row("teachers mean accuracy", f"{teachers['mean_accuracy']:.4f}")
    table.add_row("teachers mean worst-group accuracy", f"{teachers['mean_worst_group_accuracy']:.4f}")
    table.add_row("teachers best / worst worst-group", f"{teachers['best_worst_group_accuracy']:.4f} / "
                  f"{teachers['worst_worst_group_accuracy']:.4f}")
    if summary.get("epsilon_spent") is not None:
        table.add_row(f"privacy {summary['privacy']['mechanism']}: ε spent (δ)",
                      f"{summary['epsilon_spent']:.3f} ({summary['delta']:.0e})")
        smooth = summary["privacy"].get("smooth_sensitivity")
        if smooth is not None and "epsilon_released" in smooth:
            table.add_row("data-dependent ε released by smooth sensitivity (expected ± noise std)",
                          f"{smooth['epsilon_released']:.3f} ({smooth['epsilon_expected']:.3f} ± "
                          f"{smooth['noise_std']:.3f})")
    for name, report in summary.get("baselines", {}).items():
        label = name.replace("_", " ") + (", NON-FEDERATED" if report.get("non_federated") else "")
        if "skipped" in report:
            table.add_row(f"{label}", f"skipped: {report['skipped']}")
            continue
        table.add_row(f"{label}: acc / wga",
                      f"{report['accuracy']:.4f} / {report['worst_group_accuracy']:.4f}")
    per_group = test["per_group_accuracy"]
    counts = test["group_counts"]
    if len(per_group) <= 24:
        for name, acc in per_group.items():
            table.add_row(f"  group {name} (n={counts[name]})", f"{acc:.4f}")
    else:
        lowest = sorted(per_group, key=per_group.get)[:10]
        table.add_row(f"  {len(per_group)} groups; the 10 lowest:", "")
        for name in lowest:
            table.add_row(f"  group {name} (n={counts[name]})", f"{per_group[name]:.4f}")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    table.add_row("run directory", str(summary["run_dir"]))
    return table
