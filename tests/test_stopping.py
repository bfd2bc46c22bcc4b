"""SIGINT and SIGTERM stop a `fedkd` run within seconds from any phase, on both engines: exit 130, the last
finished round's checkpoint kept, the resume command printed, and no process the run started left alive."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedkd.checkpoint import SERVER_CHECKPOINT, load
from fedkd.results import SUMMARY_FILE

# serial: a signal that lands while Ray starts is a race with Ray's own threads; `make test` runs these alone,
# after the parallel part, so that another worker's load does not decide it
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

RUN = ["teacher=erm", "federation.num_clients=3", "federation.num_rounds=3", "teacher.epochs=1", "student.epochs=1",
       "baselines.server_only=false"]
STOP_SECONDS = 10.0


def _checkpointed(runs: Path) -> bool:
    return any(runs.glob(f"*/*/{SERVER_CHECKPOINT}"))


def _stop(tmp_path: Path, sig: signal.Signals, when, *overrides: str) -> tuple[int, float, str, list, Path]:
    """Start `fedkd`, wait until ``when(runs, seconds)`` holds, send ``sig``; the exit code, the seconds the exit
    took, the output, the processes of the run still alive afterwards, and the runs folder."""
    runs = tmp_path / "runs"
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fedkd", *RUN, *overrides, f"runs_dir={runs}"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    start, tree = time.monotonic(), []
    try:
        while not when(runs, time.monotonic() - start):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - start < 300
            time.sleep(0.1)
        tree = psutil.Process(proc.pid).children(recursive=True)
        sent = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    psutil.wait_procs(tree, timeout=5)
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return code, took, " ".join(log.read_text().split()), alive, runs


def test_a_signal_while_the_command_starts_writes_nothing(tmp_path):
    code, took, out, alive, runs = _stop(tmp_path, signal.SIGINT, lambda runs, s: s > 0.5)
    assert (code, alive) == (130, [])
    assert took < STOP_SECONDS
    assert "fedkd: stopped before the run started; nothing was written" in out
    assert "Traceback" not in out and not runs.exists()


@pytest.mark.parametrize(("engine", "sig"), [("simulation", signal.SIGINT), ("inprocess", signal.SIGTERM)],
                         ids=["ray-SIGINT", "inprocess-SIGTERM"])
def test_a_signal_in_round_2_keeps_round_1_and_names_the_resume_command(tmp_path, engine, sig):
    code, took, out, alive, runs = _stop(tmp_path, sig, lambda runs, s: _checkpointed(runs), f"engine={engine}")
    assert code == 130 and took < STOP_SECONDS, out[-2000:]
    assert alive == [], [p.cmdline() for p in alive]
    (run_dir,) = [p for p in runs.glob("*/*") if p.is_dir()]
    assert load(run_dir / SERVER_CHECKPOINT)["round"] == 1
    assert not (run_dir / SUMMARY_FILE).exists()
    assert f"round 1's checkpoint is in {run_dir / SERVER_CHECKPOINT}: continue with `fedkd resume={run_dir}`" in out
    assert "Traceback" not in out, out[out.find("Traceback"):][:3000]


def test_a_signal_while_ray_starts_stops_every_process(tmp_path):
    """Before the first round: Ray's processes are up (or coming up), no checkpoint exists yet."""
    def ray_up(runs: Path, seconds: float) -> bool:
        return any(runs.glob("*/*/config.yaml")) and seconds > 6

    code, took, out, alive, runs = _stop(tmp_path, signal.SIGINT, ray_up)
    assert code == 130 and took < STOP_SECONDS and alive == [], out[-2000:]
    assert "no round had finished" in out and "start the run again" in out
    assert "Traceback" not in out, out[out.find("Traceback"):][:3000]
