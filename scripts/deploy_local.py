"""A whole Flower deployment on this machine: one SuperLink and N SuperNodes as separate processes on loopback,
the default job run through them with `flwr run`, and every process stopped again by PID.

    python scripts/deploy_local.py --nodes 3 [--tls] [hydra overrides ...]     (what `make deploy-local` calls)
    python scripts/deploy_local.py --nodes 3 --resume runs/<date>/<time>_<name>  (continue a stopped run)

- explicit ports: free ones are picked (or give --port / --node-ports); a port in use is an error, before any
  process starts;
- a repo-local FLWR_HOME (.flwr-deploy/) holds the connection, logs, certificates and the nodes' state folders;
  runtime dependency installation is off (the SuperLink flag and FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION);
- each node gets ``--node-config "partition-id=i num-partitions=N state-dir=... data-cache-dir=..."`` (or
  --node-configs, checked); the nodes share one data cache folder, so the benchmark is built once, not once per
  message (flwr 1.41 starts a fresh flwr-clientapp process for every message);
- each node runs as scripts/polling_supernode.py (Flower's SuperNode polling every 0.1 s, for loopback) with
  --isolation process, and scripts/warm_superexec.py beside it (forks a warm process per message); --cold runs
  Flower's flower-supernode and SuperExec instead;
- --tls: TLS on every link and SuperNode authentication (throwaway credentials from scripts/make_certs.py, or
  --certs <folder>); without it the links are plain HTTP, for loopback only;
- the run is judged by its final status in Flower (`flwr ls`), never by `flwr run --stream`'s exit code, which is
  0 even when the ServerApp crashed. Exit code 0 = finished:completed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOME = ROOT / ".flwr-deploy"
CONNECTION = "fedkd-local"
HOST = "127.0.0.1"
CERT_FILES = ("ca.crt", "server.pem", "server.key")
START_SECONDS = 60.0
STATUS_SECONDS = 120.0
STOP_SECONDS = 15.0


class DeployError(RuntimeError):
    """The deployment cannot start or did not end well; the message says what to change."""


def bin_path(name: str) -> str:
    """A Flower executable of this environment (not whatever is first on PATH)."""
    return str(Path(sys.executable).parent / name)


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError as err:
            raise DeployError(f"port {port} on {HOST} is in use ({err.strerror}): stop what holds it or pick "
                              f"another port (--port / --node-ports), or leave them out to get free ones") from err


def free_ports(count: int, taken: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


def parse_node_config(text: str, num_clients: int) -> dict:
    """A SuperNode's ``--node-config`` string, checked the way the ClientApp will read it."""
    from flwr.common.config import parse_config_args

    from clients.app import NodeConfigError, check_partition

    try:
        config = parse_config_args([text])
    except Exception as err:  # noqa: BLE001 - Flower raises plain ValueErrors and others
        raise DeployError(f"node config {text!r} cannot be parsed: {err}; write it as 'partition-id=0 "
                          f"num-partitions={num_clients}'") from err
    try:
        check_partition(config, num_clients)
    except NodeConfigError as err:
        raise DeployError(f"node config {text!r} {err}") from None
    return config


def check_node_configs(texts: list[str], num_clients: int) -> list[dict]:
    configs = [parse_node_config(t, num_clients) for t in texts]
    ids = [c["partition-id"] for c in configs]
    if sorted(ids) != list(range(num_clients)):
        raise DeployError(f"the node configs give partition ids {ids}; a federation of {num_clients} clients needs "
                          f"each of 0..{num_clients - 1} exactly once")
    return configs


def check_certs(folder: Path, num_nodes: int) -> None:
    wanted = [*CERT_FILES, *(f"node-{i}.key" for i in range(num_nodes)), *(f"node-{i}.pub" for i in range(num_nodes))]
    missing = [name for name in wanted if not (folder / name).is_file()]
    if missing:
        raise DeployError(f"--certs {folder} lacks {missing}: it needs {wanted}; make them with "
                          f"`python scripts/make_certs.py <new folder> --nodes {num_nodes}` or leave --certs out")


@dataclass
class Deployment:
    """The processes this script started (stopped by PID, in reverse order) and where their logs go."""

    home: Path
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    @property
    def pid_file(self) -> Path:
        return self.home / "pids.json"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLWR_HOME"] = str(self.home)
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        # a SuperExec looks for new tasks every second by default: a second of each message's latency
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
        # the SuperLink and SuperNodes start flower-superexec, flwr-serverapp and flwr-clientapp from PATH
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.home / "logs" / f"{name}.log", "w")  # noqa: SIM115 - the child owns it until it exits
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        self.processes.append((name, proc))
        self.pid_file.write_text(json.dumps({n: p.pid for n, p in self.processes}))
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        text = (self.home / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def flwr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([bin_path("flwr"), *args], cwd=ROOT, env=self.env(), text=True, capture_output=True,
                              check=False)

    def stop(self) -> None:
        """SIGTERM every started process (newest first), then SIGKILL what is left after STOP_SECONDS; then the
        processes they had started themselves (the SuperLink's flwr-serverapp, the SuperNodes' flwr-clientapp),
        which a SIGTERM to their parent leaves running."""
        import psutil

        from fedkd.stopping import stop_processes

        started = []
        for _, proc in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                started += psutil.Process(proc.pid).children(recursive=True)
        for _, proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for _, proc in reversed(self.processes):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stop_processes(started)


def wait_listening(deployment: Deployment, name: str, proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeployError(f"{name} exited with code {proc.returncode}:\n{deployment.log_tail(name)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.2)
    raise DeployError(f"{name} did not listen on {HOST}:{port} within {START_SECONDS:.0f} s:\n"
                      f"{deployment.log_tail(name)}")


def write_connection(home: Path, port: int, certs: Path | None) -> None:
    """The `flwr` CLI's connection to this SuperLink, in FLWR_HOME/config.toml (this script's own home)."""
    security = f'root-certificates = "{certs / "ca.crt"}"' if certs else "insecure = true"
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                      f'address = "{HOST}:{port}"\n{security}\n')


def superlink_args(port: int, certs: Path | None) -> list[str]:
    security = (["--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
                 "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth"] if certs else ["--insecure"])
    return [bin_path("flower-superlink"), *security, "--host", HOST, "--port", str(port),
            "--disable-runtime-dependency-installation"]


def supernode_args(superlink_port: int, port: int, node_config: str, certs: Path | None, key: Path | None,
                   warm: bool = False) -> list[str]:
    """``flower-supernode``'s command line; ``warm``: scripts/polling_supernode.py (Flower's SuperNode polling
    every 0.1 s) in process isolation, its SuperExec started by us (``warm_superexec_args``)."""
    if certs:
        security = ["--root-certificates", str(certs / "ca.crt")]
        if key is not None:
            security += ["--auth-supernode-private-key", str(key)]
    else:
        security = ["--insecure"]
    command = ([sys.executable, str(ROOT / "scripts" / "polling_supernode.py")] if warm
               else [bin_path("flower-supernode")])
    return [*command, *security, "--superlink", f"{HOST}:{superlink_port}", "--host", HOST,
            "--port", str(port), "--node-config", node_config, *(["--isolation", "process"] if warm else [])]


def warm_superexec_args(port: int, node_pid: int) -> list[str]:
    """scripts/warm_superexec.py for the SuperNode whose runtime API listens on ``port`` (loopback, plain, as
    the SuperExec a SuperNode starts itself)."""
    return [sys.executable, str(ROOT / "scripts" / "warm_superexec.py"), "--runtime-api-address", f"{HOST}:{port}",
            "--insecure", "--parent-pid", str(node_pid)]


def run_status(deployment: Deployment, run_id: str) -> dict:
    """The run's entry in `flwr ls`, once Flower has it finished (the status is set shortly after the stream
    ends)."""
    deadline = time.monotonic() + STATUS_SECONDS
    while True:
        listing = deployment.flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json")
        try:
            runs = json.loads(listing.stdout).get("runs", [])
        except json.JSONDecodeError:
            runs = []
        if runs and str(runs[0].get("status", "")).startswith("finished"):
            return runs[0]
        if time.monotonic() > deadline:
            raise DeployError(f"run {run_id} did not reach a final status within {STATUS_SECONDS:.0f} s after "
                              f"`flwr run` ended: {listing.stdout or listing.stderr}")
        time.sleep(1.0)


def start_superlink(deployment: Deployment, port: int, certs: Path | None) -> subprocess.Popen:
    link = deployment.start("superlink", superlink_args(port, certs))
    wait_listening(deployment, "superlink", link, port)
    return link


def register_node(deployment: Deployment, public_key: Path) -> None:
    """`flwr supernode register`: only registered keys may connect to a SuperLink with node authentication."""
    registered = deployment.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
    if registered.returncode != 0 or '"success": true' not in registered.stdout.replace("\n", ""):
        raise DeployError(f"registering {public_key} failed: {registered.stdout}{registered.stderr}")


def start_supernode(deployment: Deployment, name: str, superlink_port: int, port: int, node_config: str,
                    certs: Path | None, key: Path | None, warm: bool = False) -> subprocess.Popen:
    """A SuperNode, listening; ``warm``: with the forking SuperExec of scripts/warm_superexec.py beside it."""
    node = deployment.start(name, supernode_args(superlink_port, port, node_config, certs, key, warm))
    wait_listening(deployment, name, node, port)
    if warm:
        deployment.start(f"{name}-superexec", warm_superexec_args(port, node.pid))
    return node


def deploy(args: argparse.Namespace) -> int:
    """Check everything, start the SuperLink and the SuperNodes, run the job, stop them all."""
    sys.path.insert(0, str(ROOT))
    home = args.home.resolve()
    node_texts = args.node_configs or [f"partition-id={i} num-partitions={args.nodes}" for i in range(args.nodes)]
    if len(node_texts) != args.nodes:
        raise DeployError(f"--node-configs gives {len(node_texts)} configs for --nodes {args.nodes}")
    configs = check_node_configs(node_texts, args.nodes)
    node_texts = [t if "state-dir" in c else f'{t} state-dir="{home / "state" / f"node-{i}"}"'
                  for i, (t, c) in enumerate(zip(node_texts, configs, strict=True))]
    node_texts = [t if "data-cache-dir" in c else f'{t} data-cache-dir="{home / "data-cache"}"'
                  for t, c in zip(node_texts, configs, strict=True)]
    if args.node_ports and len(args.node_ports) != args.nodes:
        raise DeployError(f"--node-ports gives {len(args.node_ports)} ports for --nodes {args.nodes}")
    explicit = [p for p in [args.port, *(args.node_ports or [])] if p is not None]
    for port in explicit:
        if not 1 <= port <= 65535:
            raise DeployError(f"port {port} is outside 1..65535: give --port / --node-ports valid TCP ports, or "
                              "leave them out to get free ones")
        check_port_free(port)
    if args.tls and args.certs is not None:
        check_certs(args.certs, args.nodes)
    from fedkd.validation import load_run_config, resume_target

    overrides = list(args.overrides)
    if args.resume is not None:
        if overrides:
            raise DeployError(f"--resume continues a run with its own config.yaml; drop the overrides {overrides}")
        cfg, _ = resume_target(args.resume)  # ConfigError: before any process starts
    else:
        if not any(o.startswith("federation.num_clients=") for o in overrides):
            overrides.append(f"federation.num_clients={args.nodes}")
        cfg = load_run_config(overrides)  # ConfigError: before any process starts
    if cfg.federation.num_clients != args.nodes:
        raise DeployError(f"federation.num_clients={cfg.federation.num_clients} but --nodes {args.nodes}: one "
                          "SuperNode per client; drop the override or make them equal")
    certs = None
    if args.tls:
        certs = (args.certs or home / "certs").resolve()
        if args.certs is None and not (certs / "ca.crt").exists():
            from make_certs import write_credentials

            write_credentials(certs, [HOST, "localhost"], args.nodes)
        check_certs(certs, args.nodes)
    superlink_port = args.port or free_ports(1, set(explicit))[0]
    node_ports = args.node_ports or free_ports(args.nodes, {superlink_port, *explicit})

    (home / "logs").mkdir(parents=True, exist_ok=True)
    write_connection(home, superlink_port, certs)
    if not args.tls:
        print("deploy-local: WARNING: insecure mode (plain HTTP, no node authentication) is for loopback only; "
              "use --tls for anything that leaves this machine", file=sys.stderr)
    deployment = Deployment(home)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        link = start_superlink(deployment, superlink_port, certs)
        print(f"deploy-local: SuperLink on {HOST}:{superlink_port} (pid {link.pid}), FLWR_HOME={home}"
              + (", TLS and SuperNode authentication on" if certs else ""))
        for i, (text, port) in enumerate(zip(node_texts, node_ports, strict=True)):
            key = None
            if certs:
                register_node(deployment, certs / f"node-{i}.pub")
                key = certs / f"node-{i}.key"
            node = start_supernode(deployment, f"supernode-{i}", superlink_port, port, text, certs, key,
                                   warm=not args.cold)
            print(f"deploy-local: SuperNode {i} (pid {node.pid}) on {HOST}:{port}, node config '{text}'")
        started = time.time()
        try:
            return run_job(deployment, overrides, args.resume)
        except (KeyboardInterrupt, SystemExit):
            home_arg = "" if home == DEFAULT_HOME.resolve() else f" --home {home}"
            print(f"deploy-local: stopped; {resume_hint(cfg.runs_dir, started, f'--nodes {args.nodes}{home_arg}')}",
                  flush=True)
            raise
    finally:
        deployment.stop()
        signal.signal(signal.SIGTERM, previous)
        print(f"deploy-local: stopped {len(deployment.processes)} processes "
              f"({', '.join(str(p.pid) for _, p in deployment.processes)})")


def resume_hint(runs_dir: str, since: float, options: str) -> str:
    """Where the newest run this deployment started keeps its last checkpoint, and the command that continues it
    (the ServerApp runs in the repository, so a relative runs_dir is under it)."""
    from fedkd.checkpoint import SERVER_CHECKPOINT

    root = Path(runs_dir) if Path(runs_dir).is_absolute() else ROOT / runs_dir
    runs = [p.parents[1] for p in root.glob(f"*/*/{SERVER_CHECKPOINT}") if p.parents[1].stat().st_mtime >= since - 1]
    if not runs:
        return "no round had finished: start the run again"
    run = max(runs, key=lambda p: p.stat().st_mtime)
    return (f"the last finished round's checkpoint is in {run / SERVER_CHECKPOINT}: continue with "
            f"`python scripts/deploy_local.py {options} --resume {run}`")


def run_job(deployment: Deployment, overrides: list[str], resume: Path | None = None) -> int:
    """`flwr run . <connection> --stream`, echoed; then the run's final status from `flwr ls`."""
    run_config = (f"resume={json.dumps(str(resume.resolve()))}" if resume is not None
                  else f"overrides={json.dumps(shlex.join(overrides))}")
    stream = subprocess.Popen([bin_path("flwr"), "run", str(ROOT), CONNECTION, "--stream", "--run-config",
                               run_config], cwd=ROOT, env=deployment.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    run_id = None
    try:
        for line in stream.stdout:
            sys.stdout.write(line)
            found = re.search(r"Successfully started run (\d+)", line)
            run_id = run_id or (found.group(1) if found else None)
    finally:
        if stream.poll() is None:
            stream.terminate()
        stream.wait()
    if run_id is None:
        raise DeployError("`flwr run` did not start a run; see its output above")
    run = run_status(deployment, run_id)
    print(f"deploy-local: Flower reports run {run_id} as {run['status']}"
          + (f" ({run['status-details']})" if run.get("status-details") not in (None, "N/A") else ""))
    return 0 if run["status"] == "finished:completed" else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=2, help="SuperNodes (= federation.num_clients)")
    p.add_argument("--tls", action="store_true", help="TLS on every link and SuperNode authentication")
    p.add_argument("--certs", type=Path, help="with --tls: a folder from scripts/make_certs.py (default: made)")
    p.add_argument("--port", type=int, help="the SuperLink's port (default: a free one)")
    p.add_argument("--node-ports", type=int, nargs="+", help="the SuperNodes' ports (default: free ones)")
    p.add_argument("--node-configs", nargs="+", help="one --node-config string per node (default: partition-id=i "
                   "num-partitions=N)")
    p.add_argument("--resume", type=Path, help="continue a run stopped or killed in an earlier deployment from its "
                   "last checkpoint (the run directory; the nodes' states are under --home)")
    p.add_argument("--cold", action="store_true", help="Flower's own SuperExec: a fresh flwr-clientapp process per "
                   "message (default: scripts/warm_superexec.py forks a process that imported torch and Flower once)")
    p.add_argument("--home", type=Path, default=DEFAULT_HOME, help="FLWR_HOME (default: .flwr-deploy in the repo)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the job, e.g. federation.num_rounds=2")
    return p


def main(argv: list[str]) -> int:
    from fedkd.config import ConfigError

    args = parser().parse_args(argv)
    if args.nodes < 1:
        print("deploy-local: --nodes must be at least 1", file=sys.stderr)
        return 2
    try:
        return deploy(args)
    except (DeployError, ConfigError) as err:
        print(f"deploy-local: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
    sys.exit(130)
