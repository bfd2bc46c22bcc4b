"""The deployment: a SuperLink and SuperNodes as separate processes on loopback, driven by
scripts/deploy_local.py as a user runs it (`make deploy-local`). Every process is stopped by PID, also when a
test fails."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedkd.results import read_metrics, read_summary

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import deploy_local  # noqa: E402
from make_certs import write_credentials  # noqa: E402

pytestmark = pytest.mark.e2e

FAST = ["teacher=erm", "teacher.epochs=1", "student.epochs=1", "baselines.ensemble=false",
        "baselines.server_only=false"]


def _started_pids(home: Path) -> dict[str, int]:
    path = home / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _assert_all_stopped(home: Path) -> None:
    for name, pid in _started_pids(home).items():
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"{name} (pid {pid}) still runs"


@contextlib.contextmanager
def _deployment_script(home: Path, *args: str):
    """Run the script in its own session; whatever happens, kill what it started (by PID) afterwards."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "deploy_local.py"), "--home", str(home), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        for pid in _started_pids(home).values():
            with contextlib.suppress(ProcessLookupError):
                psutil.Process(pid).kill() if psutil.pid_exists(pid) else None
        if proc.poll() is None:
            proc.kill()


@pytest.mark.serial  # it kills a node between rounds 1 and 2: another worker's load must not decide the timing
def test_a_secure_deployment_runs_and_a_killed_supernode_drops_out(tmp_path):
    """TLS and SuperNode authentication on, 3 nodes: round 1 with all of them, then SIGKILL of node 2; round 2
    finishes with the other two, the failure recorded, every process stopped, each node's state in its folder."""
    home, runs = tmp_path / "home", tmp_path / "runs"
    with _deployment_script(home, "--tls", "--nodes", "3", "federation.num_rounds=2", "federation.min_clients=2",
                            "federation.round_timeout=20", *FAST, f"runs_dir={runs}") as proc:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = list(runs.glob("*/*/metrics.jsonl"))
            if metrics and metrics[0].read_text().strip():
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the deployment ended before round 1's metrics: " + proc.communicate()[0][-4000:]
        victim = _started_pids(home)["supernode-2"]
        psutil.Process(victim).kill()  # SIGKILL: the SuperLink notices when its heartbeats stop
        output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]
    assert "TLS and SuperNode authentication on" in output and "WARNING: insecure" not in output
    assert "Flower reports run" in output and "as finished:completed" in output
    (run_dir,) = [p for p in runs.glob("*/*") if p.is_dir()]
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [1, 2]
    assert [r["participants"] for r in records] == [[0, 1, 2], [0, 1]]
    (failure,) = records[1]["failed_clients"]
    assert failure["partition"] == 2 and failure["round"] == 2
    assert "Node Unavailable" in failure["reason"] or "no reply within" in failure["reason"]
    summary = read_summary(run_dir)
    assert summary["num_rounds"] == 2 and summary["dropped_clients"] == [failure]
    assert sorted(_started_pids(home)) == ["superlink", *(f"supernode-{i}{part}" for i in range(3)
                                                          for part in ("", "-superexec"))]
    _assert_all_stopped(home)
    # the nodes kept their teachers in their own state folders (what a restarted node or a resumed run reads)
    assert sorted(p.name for p in (home / "state").glob("node-*/*/partition-*")) == [
        "partition-0", "partition-1", "partition-2"]


def test_an_unregistered_supernode_is_refused(tmp_path):
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    certs = tmp_path / "certs"
    write_credentials(certs, ["127.0.0.1", "localhost"], 2)
    link_port, node_port, stranger_port = deploy_local.free_ports(3, set())
    deploy_local.write_connection(home, link_port, certs)
    deployment = deploy_local.Deployment(home)
    try:
        deploy_local.start_superlink(deployment, link_port, certs)
        deploy_local.register_node(deployment, certs / "node-0.pub")
        member = deploy_local.start_supernode(deployment, "member", link_port, node_port,
                                              "partition-id=0 num-partitions=2", certs, certs / "node-0.key")
        stranger = deployment.start("stranger", deploy_local.supernode_args(
            link_port, stranger_port, "partition-id=1 num-partitions=2", certs, certs / "node-1.key"))
        assert stranger.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in deployment.log_tail("stranger", 40)
        assert "No SuperNode found with the given public key" in deployment.log_tail("superlink", 80)
        listing = deployment.flwr("supernode", "ls", deploy_local.CONNECTION, "--format", "json")
        nodes = json.loads(listing.stdout)["nodes"]
        assert len(nodes) == 1 and member.poll() is None
    finally:
        deployment.stop()
    _assert_all_stopped(home)


def _main(home: Path, *args: str) -> int:
    return deploy_local.main(["--home", str(home), *args])


def test_bad_input_is_refused_before_any_process_starts(tmp_path, capsys):
    home = tmp_path / "home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert _main(home, "--port", str(port)) == 2
        assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    empty = tmp_path / "certs"
    empty.mkdir()
    assert _main(home, "--tls", "--certs", str(empty)) == 2
    assert "lacks ['ca.crt', 'server.pem', 'server.key', 'node-0.key'" in capsys.readouterr().err
    assert _main(home, "--node-configs", "num-partitions=2", "partition-id=1 num-partitions=2") == 2
    assert "node config 'num-partitions=2' lacks 'partition-id'" in capsys.readouterr().err
    assert _main(home, "--node-configs", "partition-id=0 num-partitions=2", "partition-id=2 num-partitions=2") == 2
    assert "partition-id=2 is outside 0..1" in capsys.readouterr().err
    assert _main(home, "--node-configs", "partition-id=0 num-partitions=2", "partition-id=0 num-partitions=2") == 2
    assert "needs each of 0..1 exactly once" in capsys.readouterr().err
    assert _main(home, "--nodes", "2", "federation.num_clients=3") == 2
    assert "federation.num_clients=3 but --nodes 2" in capsys.readouterr().err
    assert _main(home, "aggregator=nope") == 2
    assert "aggregator" in capsys.readouterr().err
    assert not home.exists()  # nothing was started or written


def test_stopping_a_deployment_stops_what_its_processes_started(tmp_path):
    """A SuperLink's flwr-serverapp and a SuperNode's flwr-clientapp outlive a SIGTERM to their parent: the
    deployment stops them too, by the PIDs it saw under its own processes."""
    (tmp_path / "logs").mkdir()
    deployment = deploy_local.Deployment(tmp_path)
    parent = deployment.start("parent", [sys.executable, "-c", (
        "import signal, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, "
        "signal.SIG_IGN); time.sleep(300)'])\n"
        "time.sleep(300)\n")])
    deadline = time.monotonic() + 30
    while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    (child,) = psutil.Process(parent.pid).children()
    deployment.stop()
    psutil.wait_procs([child], timeout=10)
    assert parent.poll() is not None
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_the_fab_ships_the_apps_and_no_study_results(tmp_path):
    """`flwr run` builds the FAB from the checkout: a study's committed job folders (named by overrides with commas,
    which Flower's hash list cannot hold) stay out of it; the apps and their config go in."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    study_file = ROOT / "studies" / "fab-check" / "a=1,b=2" / "summary.json"
    created = not study_file.exists()
    study_file.parent.mkdir(parents=True, exist_ok=True)
    study_file.write_text("{}")
    try:
        names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT))).namelist()
    finally:
        if created:
            study_file.unlink()
            study_file.parent.rmdir()
            with contextlib.suppress(OSError):
                study_file.parent.parent.rmdir()
    assert not [n for n in names if n.startswith("studies/") or "," in n]
    assert {"server/app.py", "clients/app.py", "fedkd/cli.py", "conf/config.yaml"} <= set(names)
