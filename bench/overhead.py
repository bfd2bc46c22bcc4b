"""Overhead of Flower's simulation engine: the same job through the simulation engine (Ray) and through the
in-process grid (the same ClientApp and round loop, no Ray), side by side in one process. The metrics must be
identical (every field of metrics.jsonl but the wall times); the wall-time ratios are printed.

    python bench/overhead.py [hydra overrides ...]        (default: the demo job, `make demo`)
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedkd.cli import simulate  # noqa: E402
from fedkd.results import read_metrics  # noqa: E402
from fedkd.validation import load_run_config  # noqa: E402


def run(overrides: list[str], engine: str, runs_dir: str) -> tuple[list[dict], float]:
    cfg = load_run_config([*overrides, f"engine={engine}", f"runs_dir={runs_dir}"])
    start = time.perf_counter()
    summary = simulate(cfg, Console(file=io.StringIO()))
    return read_metrics(summary["run_dir"]), time.perf_counter() - start


def without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in records]


def main(overrides: list[str]) -> int:
    runs_dir = str(ROOT / "runs" / "bench-overhead")
    results = {engine: run(overrides, engine, runs_dir) for engine in ("inprocess", "simulation")}
    (inproc, inproc_total), (sim, sim_total) = results["inprocess"], results["simulation"]
    if without_times(inproc) != without_times(sim):
        print("overhead: the two engines gave different metrics", file=sys.stderr)
        return 1
    rounds = [{"round": a["round"], "simulation_s": b["wall_seconds"], "inprocess_s": a["wall_seconds"],
               "ratio": b["wall_seconds"] / a["wall_seconds"]} for a, b in zip(inproc, sim, strict=True)]
    steady = rounds[1:] or rounds
    figures = {
        "overrides": overrides,
        "metrics_identical": True,
        "rounds": rounds,
        "steady_state_ratio": sum(r["simulation_s"] for r in steady) / sum(r["inprocess_s"] for r in steady),
        "end_to_end_s": {"simulation": sim_total, "inprocess": inproc_total},
        "end_to_end_ratio": sim_total / inproc_total,
    }
    for r in rounds:
        print(f"round {r['round']}: simulation {r['simulation_s']:.2f} s, in-process {r['inprocess_s']:.2f} s, "
              f"ratio {r['ratio']:.3f}")
    print(f"steady state (rounds >= 2): ratio {figures['steady_state_ratio']:.3f}")
    print(f"end to end: simulation {sim_total:.1f} s, in-process {inproc_total:.1f} s, "
          f"ratio {figures['end_to_end_ratio']:.3f}")
    print("metrics.jsonl identical on both engines (wall times aside)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
