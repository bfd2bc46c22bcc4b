"""What the study scripts share: run one cell through the in-process grid with shared teachers, append its row
to a JSON-lines file as soon as it is done (a rerun skips finished cells), and write a study's own section of
docs/results.md without touching the other studies' sections.

Every row carries a ``provenance`` object: the commit, whether the code had uncommitted changes, the command line,
the date and the machine. A study prints its progress to stdout only; keep that log outside the repository
(``> runs/<study>.log``: runs/ is ignored by git)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.app import app as client_app  # noqa: E402
from fedkd.provenance import provenance as run_provenance  # noqa: E402
from fedkd.results import read_metrics  # noqa: E402
from fedkd.run_groups import mean_std  # noqa: E402
from fedkd.validation import load_run_config  # noqa: E402
from server.app import run_federation  # noqa: E402
from server.inprocess import InProcessGrid, TrainedTeacherCache  # noqa: E402

REPORT = ROOT / "docs" / "results.md"


def run_cell(overrides: list[str], cache: TrainedTeacherCache) -> tuple[dict, list[dict], float, bool]:
    """One federated run: (summary, metrics records, seconds, whether its teachers came from the cache)."""
    cfg = load_run_config(overrides)
    start, hits = time.perf_counter(), cache.hits
    summary = run_federation(InProcessGrid(cache, cfg.federation.num_clients), cfg, console=Console(file=io.StringIO()))
    return summary, read_metrics(summary["run_dir"]), time.perf_counter() - start, cache.hits > hits


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def study_arguments(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from finished rows")
    parser.add_argument("--reverse", action="store_true", help="run the seeds and cells last to first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--max-cells", type=int, default=0, help="stop after running this many cells (0: all)")
    parser.add_argument("--seeds", type=lambda text: tuple(int(s) for s in text.split(",")), default=None,
                        help="run only these seeds, comma separated (default: all of the study's)")
    parser.add_argument("--match", default="", help="run only the cells whose name contains this text")
    return parser.parse_args()


def _claim(claims: Path, cell: str, seed: int) -> FileLock | None:
    """The lock of (cell, seed), held by this process while it runs the cell; None when another process holds it.
    The operating system releases a dead process's lock, so a killed worker's cell is taken over by the next."""
    lock = FileLock(claims / f"{seed}-{hashlib.sha1(cell.encode()).hexdigest()[:12]}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def _finished(path: Path) -> set[tuple[str, int]]:
    return {(r["cell"], r["seed"]) for r in read_rows(path)}


def run_missing(name: str, path: Path, cells: list[str], seeds: tuple[int, ...],
                make_row: Callable[[str, int, TrainedTeacherCache], dict], report: Callable[[], None],
                args: argparse.Namespace, seeds_of: Callable[[str], tuple[int, ...]] | None = None) -> None:
    """Run every (cell, seed) not yet in ``path``, seed by seed (one seed's teachers cached at a time), appending
    each row at once and refreshing the report.

    Two processes can share the work on a 2-core machine: one with ``--threads 1``, one with ``--threads 1
    --reverse`` (seeds and cells last to first, so that the two meet once per seed and rarely train the same
    teachers twice). A cell is locked first (``<path>.claims/``, ``filelock``), so no cell runs twice.
    ``seeds_of``: the seeds a cell runs at, where not every cell runs at every seed of ``seeds``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    claims = path.with_suffix(".claims")
    claims.mkdir(exist_ok=True)
    finished = _finished(path)
    order = [c for c in (cells[::-1] if args.reverse else cells) if args.match in c]  # reversed: meets mid-seed
    seeds = tuple(s for s in seeds if args.seeds is None or s in args.seeds)
    todo = [(c, s) for s in sorted(seeds, reverse=args.reverse) for c in order
            if (c, s) not in finished and (seeds_of is None or s in seeds_of(c))]
    print(f"{name}: {len(cells)} cells, seeds {list(seeds)}, {len(todo)} runs not finished", flush=True)
    cache, cache_seed, ran = None, None, 0
    for cell, seed in todo:
        if args.max_cells and ran == args.max_cells:
            break
        lock = _claim(claims, cell, seed)
        if lock is None:
            continue  # another worker runs it
        with lock:
            if (cell, seed) in _finished(path):
                continue  # another worker finished it since this one started
            ran += 1
            if seed != cache_seed:
                cache, cache_seed = TrainedTeacherCache(client_app), seed
            row = {**make_row(cell, seed, cache), "provenance": run_provenance()}
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
        print(f"{cell} | seed {seed} | acc {row['accuracy']:.3f} wga {row['worst_group_accuracy']:.3f} | "
              f"{row['seconds']:.0f} s", flush=True)
        report()
    report()


def study_main(doc: str, name: str, path: Path, cells: list[str], seeds: tuple[int, ...],
               make_row: Callable[[str, int, TrainedTeacherCache], dict], report: Callable[[], None],
               seeds_of: Callable[[str], tuple[int, ...]] | None = None) -> None:
    """A study script's command line: run what is missing (unless --report-only), then rebuild the report."""
    args = study_arguments(doc)
    if not args.report_only:
        run_missing(name, path, cells, seeds, make_row, report, args, seeds_of)
    report()


# How every study report reads its ± (the convention of `fedkd report`, fedkd.run_groups.mean_std).
MEAN_STD_NOTE = "mean ± sample standard deviation (ddof=1) over the n seeds (one seed: the mean alone)"


def format_mean_std(values: list[float], fmt: str = ".3f") -> str:
    """``mean ± sample std`` (fedkd.run_groups.mean_std, ddof=1, as `fedkd report`); the mean alone for one value,
    which has no spread to estimate; ``–`` for none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:{fmt}}" if math.isnan(std) else f"{mean:{fmt}} ± {std:{fmt}}"


def write_section(marker: str, lines: list[str]) -> None:
    """Replace the section between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` of docs/results.md
    (appended when absent), keeping every other section."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    text = "\n".join([begin, *lines, end])
    old = REPORT.read_text() if REPORT.exists() else "# Results\n"
    if begin in old:
        head, rest = old.split(begin, 1)
        REPORT.write_text(head + text + rest.split(end, 1)[1])
    else:
        REPORT.write_text(old.rstrip("\n") + "\n\n" + text + "\n")


def provenance(stem: str, rows: list[dict], plots: list[str] | None = None) -> str:
    """The report's first sentences: how to rerun the study, where its rows and plot are, how much it ran."""
    hours = sum(r["seconds"] for r in rows) / 3600
    plot_names = ", ".join(f"`docs/{name}`" for name in (plots or [f"{stem}.png"]))
    return (f"Command (resumable): `mkdir -p runs; nohup .venv/bin/python bench/{stem}.py > runs/{stem}.log 2>&1 &`. "
            f"Raw rows: `docs/{stem}.jsonl` (each row's `provenance`: commit, command, date, machine; rows without "
            f"one: `docs/{stem}.provenance.json`); plot: {plot_names}. {len(rows)} runs in {hours:.2f} h "
            "(in-process grid, CPU).")
