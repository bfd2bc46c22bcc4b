"""End-to-end runs of the `fedkd` command through Flower's simulation engine (Ray), as a user types them, and
their console: no Flower DEBUG lines and no `run_simulation` deprecation warning by default, both back with
FEDKD_FLOWER_LOG=debug, and Flower's lines once each either way."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from flwr.clientapp import ClientApp

from clients.app import app as client_app
from clients.app import query_softlabels, train_teacher
from fedkd import protocol
from fedkd.checkpoint import CLIENT_STATE_ENV, SERVER_CHECKPOINT, load
from fedkd.console import FLOWER_LOG_ENV, RUN_SIMULATION_DEPRECATION
from fedkd.results import read_metrics, read_summary

pytestmark = pytest.mark.e2e

FLOWER_DEBUG = re.compile(r"^(\x1b\[\d+m)?DEBUG\b", re.MULTILINE)  # Flower's console handler (colours or not)
ROOT_DEBUG = ":DEBUG:"  # the root handler's format (logging.basicConfig, which opacus calls at import)


def _flower_log_env(flower_log: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (FLOWER_LOG_ENV, "FLWR_LOG_LEVEL")}
    if flower_log is not None:
        env[FLOWER_LOG_ENV] = flower_log
    return env


def _process_tree(pid: int) -> list:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


@pytest.mark.serial  # it kills the run once round 2 is checkpointed: 3.8 min beside the other workers, 1.5 min alone
def test_a_killed_simulation_resumed_gives_the_metrics_of_the_uninterrupted_run(tmp_path):
    """SIGKILL of `fedkd` and its whole process tree (Ray included) once round 2 of 4 is checkpointed, then
    `fedkd resume=<run dir>`: the metrics equal, bit for bit, those of the uninterrupted job on the in-process
    grid (which the Ray engine reproduces: clients run on federation.client_cpus threads everywhere), so one
    comparison checks the resume and the engines' agreement. The killed run has FEDKD_FLOWER_LOG=debug: Flower's
    DEBUG lines and its deprecation warning (once); the resumed run has the default console: neither."""
    overrides = ["teacher=erm", "baselines.server_only=false", "federation.num_clients=2", "federation.num_rounds=4",
                 "teacher.epochs=1",
                 "student.epochs=1", "query=random", "query.per_round=300"]
    from fedkd.validation import load_run_config
    from server.app import run_federation
    from server.inprocess import InProcessGrid

    whole = read_summary(run_federation(InProcessGrid(client_app, 2),
                                        load_run_config([*overrides, f"runs_dir={tmp_path / 'inprocess'}"]))["run_dir"])

    runs, log = tmp_path / "killed", tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fedkd", *overrides, f"runs_dir={runs}"],
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
                                env=_flower_log_env("debug"))
    tree = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            checkpoints = list(runs.glob(f"*/*/{SERVER_CHECKPOINT}"))
            if checkpoints and load(checkpoints[0])["round"] >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        tree = _process_tree(proc.pid)
    finally:
        for p in tree or [psutil.Process(proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    psutil.wait_procs(tree, timeout=30)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    debug = log.read_text()
    assert FLOWER_DEBUG.search(debug) and ROOT_DEBUG not in debug, debug[-3000:]
    assert debug.count(RUN_SIMULATION_DEPRECATION) == 1, debug[-3000:]

    (run_dir,) = [p for p in runs.glob("*/*") if p.is_dir()]
    assert not (run_dir / "summary.json").exists()
    done = load(run_dir / SERVER_CHECKPOINT)["round"]
    assert 2 <= done < 4
    resumed = subprocess.run([sys.executable, "-m", "fedkd", f"resume={run_dir}"], capture_output=True, text=True,
                             timeout=600, env=_flower_log_env(None))
    console = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, console[-3000:]
    assert not FLOWER_DEBUG.search(console) and ROOT_DEBUG not in console, console[-3000:]
    assert "DEPRECATED FEATURE" not in console and RUN_SIMULATION_DEPRECATION not in console
    assert f"resuming after round {done}" in resumed.stdout
    summary = read_summary(run_dir)
    assert summary["resumed_after_rounds"] == [done]
    for key in ("test", "teachers", "communication"):
        assert summary[key] == whole[key], key
    strip = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in read_metrics(run_dir)]
    assert strip == [{k: v for k, v in r.items() if k != "wall_seconds"} for r in read_metrics(whole["run_dir"])]


def test_resume_refuses_other_overrides_and_finished_runs(tmp_path):
    from fedkd.validation import load_run_config
    from server.app import run_federation
    from server.inprocess import InProcessGrid

    cfg = load_run_config(["baselines.server_only=false", "federation.num_clients=2", "federation.num_rounds=1",
                           "teacher.epochs=1",
                           "student.epochs=1", f"runs_dir={tmp_path}"])
    summary = run_federation(InProcessGrid(client_app, 2), cfg)
    for args, message in (([f"resume={summary['run_dir']}", "seed=3"], "drop the other overrides ['seed=3']"),
                          ([f"resume={summary['run_dir']}"], "the run finished all 1 rounds"),
                          ([f"resume={tmp_path}"], "not a run directory")):
        proc = subprocess.run([sys.executable, "-m", "fedkd", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stdout.replace("\n", ""), proc.stdout


KILL_MARK_ENV = "FEDKD_TEST_KILL_MARK"
worker_killer = ClientApp()


@worker_killer.train("teacher")
def _train_then_die_once(msg, context):
    """The real handler, except that the Ray worker running partition 1's round-2 training kills itself (SIGKILL,
    as the OOM killer would) the first time; the mark file makes the restarted worker go on."""
    mark = Path(os.environ[KILL_MARK_ENV])
    if (context.node_config["partition-id"] == 1 and protocol.parse_train_request(msg.content).round == 2
            and not mark.exists()):
        mark.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return train_teacher(msg, context)


@worker_killer.query("softlabels")
def _query(msg, context):
    return query_softlabels(msg, context)


@pytest.mark.serial  # Ray restarts the worker within the retries' 63 s alone (1 retry); beside other workers' load
# the test took 5.5 min (46 s alone)
def test_a_killed_ray_worker_takes_no_healthy_client_with_it(tmp_path, monkeypatch):
    """A Ray worker dies while a client trains: Ray restarts it, the round loop asks the client again, and the
    run finishes with every client and the metrics of the run without the kill (on the in-process grid, which
    the Ray engine reproduces bit for bit)."""
    from fedkd.cli import simulate
    from fedkd.validation import load_run_config
    from server.app import run_federation
    from server.inprocess import InProcessGrid

    overrides = ["aggregator=mean", "teacher=erm", "baselines.server_only=false", "federation.num_clients=3",
                 "federation.num_rounds=2",
                 "federation.min_clients=2", "teacher.epochs=1", "student.epochs=1"]
    whole = run_federation(InProcessGrid(client_app, 3),
                           load_run_config([*overrides, f"runs_dir={tmp_path / 'inprocess'}"]))
    mark = tmp_path / "killed-worker-pid"
    monkeypatch.setenv(KILL_MARK_ENV, str(mark))
    monkeypatch.setattr("clients.app.app", worker_killer)
    killed = simulate(load_run_config([*overrides, f"runs_dir={tmp_path / 'ray'}"]))
    assert mark.exists()  # a worker did die
    assert CLIENT_STATE_ENV not in os.environ  # the simulation's setting for its workers is undone
    assert killed["dropped_clients"] == [] and killed["num_clients"] == 3
    strip = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in read_metrics(killed["run_dir"])]
    assert strip == [{k: v for k, v in r.items() if k != "wall_seconds"} for r in read_metrics(whole["run_dir"])]
