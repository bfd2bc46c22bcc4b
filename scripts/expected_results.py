"""README.md's expected results: run the demo config and write its figures between the markers
``<!-- expected-results:begin -->`` and ``<!-- expected-results:end -->``.

    python scripts/expected_results.py           # run the demo, rewrite the block (make expected-results)
    python scripts/expected_results.py --check   # run the demo, exit 1 with a diff if the block differs (make test)

The run is ``fedkd`` with its defaults (the config of ``make demo``) on the in-process engine, whose metrics.jsonl
equals the simulation engine's line for line (``bench/overhead.py`` checks it), on the CPU with 2 torch threads, so
that the figures do not depend on the machine's core count or GPU; it writes into a temporary runs_dir. The block
holds what the run's summary.json and metrics.jsonl say, never wall times.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN = "<!-- expected-results:begin -->"
END = "<!-- expected-results:end -->"
THREADS = 2
OVERRIDES = ("engine=inprocess", "device=cpu")
COMMAND = f"OMP_NUM_THREADS={THREADS} fedkd {' '.join(OVERRIDES)}"


def _f(value: float) -> str:
    return f"{value:.4f}"


def _extreme(per_group: dict[str, float], highest: bool) -> str:
    """The lowest or highest per-group accuracy, the first group (by name) that has it, and how many share it."""
    value = max(per_group.values()) if highest else min(per_group.values())
    names = sorted(name for name, acc in per_group.items() if acc == value)
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"{_f(value)} ({names[0]}{more})"


def render_block(summary: dict, rounds: list[dict], command: str = COMMAND) -> str:
    """The Markdown between the markers: the command, one line per round, then the final summary."""
    test, teachers = summary["test"], summary["teachers"]
    lines = [
        f"`{command}` (seed {summary['seed']}: {summary['dataset']}, {summary['num_clients']} clients, "
        f"{summary['num_rounds']} rounds, aggregator {summary['aggregator']}, teachers {summary['teacher_objective']}, "
        f"student {summary['student_objective']}); written by `make expected-results`, checked by `make test`.",
        "",
        "| round | student accuracy | student WGA | teachers' mean accuracy | teachers' mean WGA |",
        "|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(f"| {r['round']} | {_f(r['test']['accuracy'])} | {_f(r['test']['worst_group_accuracy'])} | "
                     f"{_f(r['teacher_mean_accuracy'])} | {_f(r['teacher_mean_worst_group_accuracy'])} |")
    per_group = test["per_group_accuracy"]
    rows = [
        ("student accuracy", _f(test["accuracy"])),
        ("student worst-group accuracy", f"{_f(test['worst_group_accuracy'])} ({test['worst_group']})"),
        ("student mean-group accuracy", _f(test["mean_group_accuracy"])),
        ("student worst-class accuracy", _f(test["worst_class_accuracy"])),
        *([("student bias-aligned / bias-conflicting accuracy (the lower is AGRE-KD's two-group WGA)",
            f"{_f(test['bias_aligned_accuracy'])} / {_f(test['bias_conflicting_accuracy'])}")]
          if "two_group_worst_group_accuracy" in test else []),
        (f"student per-group accuracy, lowest / highest of {len(per_group)} groups",
         f"{_extreme(per_group, False)} / {_extreme(per_group, True)}"),
        ("teachers' mean accuracy", _f(teachers["mean_accuracy"])),
        ("teachers' mean worst-group accuracy", _f(teachers["mean_worst_group_accuracy"])),
        ("teachers' best / worst worst-group accuracy",
         f"{_f(teachers['best_worst_group_accuracy'])} / {_f(teachers['worst_worst_group_accuracy'])}"),
    ]
    if summary.get("epsilon_spent") is not None:
        rows.append((f"privacy {summary['privacy']['mechanism']}: ε spent (δ)",
                     f"{summary['epsilon_spent']:.3f} ({summary['delta']:.0e})"))
    for name, report in summary.get("baselines", {}).items():
        label = name.replace("_", " ") + (", NON-FEDERATED" if report.get("non_federated") else "")
        if "skipped" in report:
            rows.append((label, f"skipped: {report['skipped']}"))
        else:
            rows.append((f"{label}: accuracy / worst-group accuracy",
                         f"{_f(report['accuracy'])} / {_f(report['worst_group_accuracy'])}"))
            if "vote" in report:
                vote = report["vote"]
                rows.append((f"{label}, majority vote: accuracy / worst-group accuracy",
                             f"{_f(vote['accuracy'])} / {_f(vote['worst_group_accuracy'])}"))
    lines += ["", "| final student (test split) and references | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    return "\n".join(lines)


def read_block(text: str) -> str:
    """The text between the markers (without them)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one {BEGIN} followed by one {END}")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def replace_block(text: str, block: str) -> str:
    """``text`` with the block between the markers replaced by ``block``."""
    read_block(text)
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}"


def block_diff(text: str, block: str, name: str = "README.md") -> str:
    """A unified diff from the block in ``text`` to ``block``; empty when they are equal."""
    return "\n".join(difflib.unified_diff(read_block(text).splitlines(), block.splitlines(),
                                          f"{name} (committed)", "fresh run", lineterm=""))


def run_demo() -> tuple[dict, list[dict]]:
    """Run the demo config with ``python -m fedkd`` into a temporary runs_dir: (summary.json, metrics.jsonl)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "fedkd", *OVERRIDES, f"runs_dir={tmp}"], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=False)
        summaries = list(Path(tmp).glob("*/*/summary.json"))
        if done.returncode != 0 or len(summaries) != 1:
            raise RuntimeError(f"the demo run failed (exit {done.returncode}):\n"
                               f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
        run_dir = summaries[0].parent
        rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return json.loads(summaries[0].read_text()), rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare only: exit 1 with a diff if the block differs")
    parser.add_argument("--readme", type=Path, default=README, help="the file holding the markers (default README.md)")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        read_block(text)
    except ValueError as err:
        print(f"expected_results: {args.readme}: {err}", file=sys.stderr)
        return 2
    try:
        block = render_block(*run_demo())
    except RuntimeError as err:
        print(f"expected_results: {err}", file=sys.stderr)
        return 1
    if args.check:
        diff = block_diff(text, block, args.readme.name)
        if diff:
            print(f"expected_results: the results block of {args.readme} differs from a fresh run of `{COMMAND}`; "
                  "run `make expected-results` if the change is intended\n" + diff, file=sys.stderr)
            return 1
        print(f"expected_results: {args.readme} matches a fresh run of `{COMMAND}`")
        return 0
    args.readme.write_text(replace_block(text, block))
    print(f"expected_results: wrote the results of `{COMMAND}` into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
