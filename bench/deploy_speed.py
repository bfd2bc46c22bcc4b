"""A deployment round against a simulation round on the same job, in one invocation: the `fedkd` command on
Flower's simulation engine, then `scripts/deploy_local.py` (a SuperLink and one SuperNode per client, as
separate processes on loopback) as ``make deploy-local`` runs it (scripts/polling_supernode.py and the forking
scripts/warm_superexec.py) and with Flower's own processes (``--cold``: a fresh ``flwr-clientapp`` per message).
The three runs must give identical metrics.
Then where a cold message's time goes: a fresh process importing Flower, torch and the ClientApp, and the
client's data built against loaded from the node's cache.

    python bench/deploy_speed.py [--nodes 3] [hydra overrides ...]      (default: the demo job, 2 rounds)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedkd.results import read_metrics  # noqa: E402


def _run_dir(runs_dir: Path) -> Path:
    (metrics,) = runs_dir.glob("*/*/metrics.jsonl")
    return metrics.parent


def simulation(overrides: list[str], runs_dir: Path) -> list[dict]:
    subprocess.run([sys.executable, "-m", "fedkd", *overrides, f"runs_dir={runs_dir}"], cwd=ROOT, check=True,
                   capture_output=True)
    return read_metrics(_run_dir(runs_dir))


def deployment(overrides: list[str], nodes: int, runs_dir: Path, home: Path, cold: bool) -> list[dict]:
    args = [sys.executable, str(ROOT / "scripts" / "deploy_local.py"), "--nodes", str(nodes), "--home", str(home),
            *(["--cold"] if cold else []), *overrides, f"runs_dir={runs_dir}"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return read_metrics(_run_dir(runs_dir))


def without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in records]


def process_start(code: str, repeats: int = 3) -> float:
    """Median wall time of a fresh Python process running ``code``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


DATA_CODE = """
import sys, time
from pathlib import Path
from fedkd.validation import load_run_config
from fedkd.data.cache import cached_federated_data
import fedkd.data, fedkd.data.sources
job = load_run_config(sys.argv[2:]).client_job()
for module in (fedkd.data, fedkd.data.sources):  # the validation built the data: forget it, as a fresh process
    for value in vars(module).values():
        getattr(value, "cache_clear", lambda: None)()
start = time.perf_counter()
cached_federated_data(Path(sys.argv[1]) if sys.argv[1] != "-" else None, job.dataset, job.partition,
                      job.num_clients, job.seed)
print(time.perf_counter() - start)
"""


def data_seconds(overrides: list[str], cache: Path | None) -> float:
    done = subprocess.run([sys.executable, "-c", DATA_CODE, str(cache) if cache else "-", *overrides], cwd=ROOT,
                          check=True, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [*args.overrides]
    if not any(o.startswith("federation.num_rounds=") for o in overrides):
        overrides.append("federation.num_rounds=2")
    overrides.append(f"federation.num_clients={args.nodes}")
    work = Path(tempfile.mkdtemp(prefix="fedkd-deploy-speed-"))
    try:
        runs = {"simulation": simulation(overrides, work / "sim")}
        for name, folder, cold in (("deployment (make deploy-local)", "warm", False),
                                   ("deployment (--cold: Flower's processes)", "cold", True)):
            runs[name] = deployment(overrides, args.nodes, work / folder, work / f"home-{folder}", cold)
        reference = without_times(runs["simulation"])
        identical = all(without_times(r) == reference for r in runs.values())
        base = runs["simulation"][-1]["wall_seconds"]
        figures = {"overrides": overrides, "metrics_identical": identical, "rounds": {}}
        for name, records in runs.items():
            seconds = [r["wall_seconds"] for r in records]
            figures["rounds"][name] = seconds
            print(f"{name}: rounds {', '.join(f'{s:.1f}' for s in seconds)} s; last round {seconds[-1] / base:.2f}x "
                  "the simulation's")
        cache = work / "data-cache"
        figures["fresh_process_s"] = {
            "python": process_start("pass"),
            "python + flwr-clientapp's imports": process_start("import flwr.supernode.cli"),
            "+ torch": process_start("import flwr.supernode.cli, torch"),
            "+ the ClientApp (fedkd)": process_start("import flwr.supernode.cli, torch, clients.app"),
        }
        figures["client_data_s"] = {"built": data_seconds(overrides, None),
                                    "built and cached": data_seconds(overrides, cache),
                                    "loaded from the cache": data_seconds(overrides, cache)}
        for group in ("fresh_process_s", "client_data_s"):
            for what, seconds in figures[group].items():
                print(f"{group.removesuffix('_s').replace('_', ' ')}: {what}: {seconds:.2f} s")
        print("metrics identical on the three" if identical else "METRICS DIFFER between the runs")
        print(json.dumps(figures))
        return 0 if identical else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
