"""`flwr run .` on a local simulation SuperLink, done safely: validate the config first, size the simulated
federation from it, judge the run by its status in Flower (not by `flwr run --stream`'s exit code, which is 0
even when the ServerApp crashed) and stop, by PID, the background SuperLink that `flwr` started.

    python scripts/flwr_run_local.py [hydra overrides ...]      (what `make flwr-run OVERRIDES=...` calls)
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def superlink_pids(flwr_home: Path) -> set[int]:
    """PIDs of local SuperLinks that use this FLWR_HOME's state database (flwr starts them in the background)."""
    marker = f"--database {flwr_home / 'local-superlink' / 'state.db'}"
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in cmdline and marker in cmdline:
            pids.add(int(proc.name))
    return pids


def flwr(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "flwr"
    return subprocess.run([str(exe), *args], cwd=ROOT, text=True, capture_output=capture, check=False)


def main(overrides: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from fedkd.config import ConfigError
    from fedkd.validation import load_run_config

    try:
        cfg = load_run_config(overrides)
    except ConfigError as err:
        print(f"fedkd: {err}", file=sys.stderr)
        return 2
    flwr_home = Path(os.environ.setdefault("FLWR_HOME", str(ROOT / ".flwr")))
    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # the SuperLink's simulation starts its own Ray instance unless RAY_ADDRESS names a cluster (fedkd.cli)
    os.environ.setdefault("RAY_ADDRESS", "local")
    # flwr starts `flower-superlink` from PATH: make it this environment's
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    already_running = superlink_pids(flwr_home)
    try:
        configured = flwr("federation", "simulation-config",
                          "--num-supernodes", str(cfg.federation.num_clients),
                          "--client-resources-num-cpus", str(max(1, round(cfg.federation.client_cpus))),
                          "--client-resources-num-gpus", str(cfg.federation.client_gpus))
        if configured.returncode != 0:
            return configured.returncode
        flwr("run", ".", "--stream", "--run-config", f"overrides={json.dumps(shlex.join(overrides))}")
        listing = flwr("ls", "--format", "json", "--limit", "1", capture=True)
        runs = json.loads(listing.stdout).get("runs", []) if listing.returncode == 0 else []
        status = runs[0].get("status", "unknown") if runs else "unknown"
        print(f"fedkd: Flower reports the run as: {status}")
        return 0 if status.startswith("finished:completed") else 1
    finally:
        stop_superlinks(superlink_pids(flwr_home) - already_running)


def stop_superlinks(pids: set[int]) -> None:
    """SIGTERM the SuperLinks this script made flwr start, then stop what they had started themselves (the
    simulation process and its Ray workers), which a SIGTERM to their parent can leave running."""
    import psutil

    from fedkd.stopping import stop_processes

    started = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            started.append(psutil.Process(pid))
            started += started[-1].children(recursive=True)
    stop_processes(started)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally block that stops the SuperLink
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
    print("fedkd: stopped; the run directory keeps its last finished round's checkpoint: continue with "
          "`flwr run . --run-config 'resume=\"<run dir>\"'` or `fedkd resume=<run dir>`")
    sys.exit(130)
