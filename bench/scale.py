"""Scale: wall time and peak memory of the `fedkd` command with 10, 50 and 100 simulated clients.

Memory is the peak, over 0.2 s samples, of the summed resident set size (RSS) of the whole process tree (the
`fedkd` process, Ray's raylet, GCS and workers); summed RSS counts pages shared between processes (torch's
libraries) once per process, so it is an upper bound on what the machine needs.

    python bench/scale.py [--clients 10 50 100] [hydra overrides ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def measure(num_clients: int, overrides: list[str]) -> dict:
    args = [sys.executable, "-m", "fedkd", f"federation.num_clients={num_clients}",
            f"runs_dir={ROOT / 'runs' / 'bench-scale'}", *overrides]
    start = time.perf_counter()
    child = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc, peak = psutil.Process(child.pid), [0]

    def sample() -> None:
        while child.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    sampler.join()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{output[-3000:]}")
    rounds = [float(line.rsplit("|", 1)[1].strip().rstrip(" s")) for line in output.splitlines()
              if line.startswith("round ")]
    return {"num_clients": num_clients, "wall_s": wall, "round_s": rounds, "peak_rss_mib": peak[0] / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    for n in args.clients:
        row = measure(n, args.overrides)
        print(f"{n:4d} clients: {row['wall_s']:.1f} s wall (rounds {', '.join(f'{r:.1f}' for r in row['round_s'])}"
              f" s), peak RSS of the process tree {row['peak_rss_mib']:.0f} MiB")
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
