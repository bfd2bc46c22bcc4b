"""A SuperNode's SuperExec that starts a ClientApp task in milliseconds: Flower's own (``flower-superexec``) with
one change, its executor forks this warm process instead of starting a fresh ``flwr-clientapp``.

flwr 1.41 runs every message in a new ``flwr-clientapp`` process (``flwr/supernode/runtime/run_clientapp.py``:
pull one task, answer, exit), which imports Python's scientific stack, torch and Flower again each time: about
3 s of a deployment round's 4-6 s per message on a 2-core CPU (docs/performance.md). This process imports those
libraries once, before any task, and forks a child per ClientApp task that runs Flower's own
``run_clientapp`` (FAB install, ClientApp load from the FAB, the message, the reply, exit), so everything but
the imports is what Flower does. fedkd's own modules are not imported here (a script, not a module of the
package, for that reason): the child loads them from the run's FAB, as a fresh process would. Torch is imported
and warmed up on one thread only (``warm_torch``), so no thread pool exists at a fork. Other task types go to
Flower's subprocess executor.

    flower-supernode --isolation process --port <P> ...
    python scripts/warm_superexec.py --runtime-api-address 127.0.0.1:<P> --insecure --parent-pid <supernode pid>

(``make deploy-local`` does this for every node; ``scripts/deploy_local.py --cold`` keeps Flower's executor.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Set

import numpy  # noqa: F401  imported once here, inherited by every forked task
import scipy.special  # noqa: F401
import scipy.stats  # noqa: F401
import torch  # noqa: F401
from flwr.clientapp import ClientApp  # noqa: F401
from flwr.supercore.cli.flower_superexec import flower_superexec
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec as superexec_loop
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime.run_clientapp import run_clientapp


class ForkingExecutor:
    """Flower's executor interface (``flwr.supercore.superexec.executor``): ClientApp tasks run in a fork of this
    process, anything else as Flower's subprocess executor runs it."""

    def __init__(self) -> None:
        self.children: set[int] = set()
        self.fallback = SubprocessExecutor()

    def get_eligible_capacity(self, supported_task_types: Set[TaskType], *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set[TaskType], set[str]]:
        return set(supported_task_types), set()

    def wait_for_capacity(self, task_type: TaskType | None = None, *, fab_hash: str | None = None,
                          insecure: bool = False, root_certificates_path: str | None = None) -> None:
        """No capacity gate, as Flower's subprocess executor."""

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return self.fallback.launch(spec)
        self.reconcile()
        pid = os.fork()
        if pid == 0:
            os._exit(_run_task(spec))
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the finished tasks."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        self.reconcile()


def _run_task(spec: ExecutionSpec) -> int:
    """In the forked child: what ``flwr-clientapp --token ...`` does; its exit code."""
    try:
        run_clientapp(runtime_api_address=spec.runtime_api_address, token=spec.token, insecure=spec.insecure,
                      certificates=validate_and_resolve_root_certificates(spec.root_certificates_path,
                                                                          spec.insecure),
                      parent_pid=spec.parent_pid, runtime_dependency_install=spec.runtime_dependency_install)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's loop
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def warm_torch() -> None:
    """One SGD step and one inference of a small CNN on one thread: torch's one-time initialisation of its CPU
    kernels and autograd (about 1 s of a fresh process's first teacher epoch here) then happens once, in this
    process, instead of in every task. One thread only, so no OpenMP pool exists at a fork; a task that sets
    more threads starts its own. The numbers a task computes do not depend on it (bench/deploy_speed.py checks
    the metrics against the simulation's)."""
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 10))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss = torch.nn.functional.cross_entropy(net(torch.zeros(4, 3, 28, 28)), torch.zeros(4, dtype=torch.long))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        net(torch.zeros(4, 3, 28, 28)).softmax(-1)


def main() -> None:
    """``flower-superexec``'s command line, with the forking executor."""
    warm_torch()
    superexec_loop.get_executor = lambda *args, **kwargs: ForkingExecutor()
    flower_superexec()


if __name__ == "__main__":
    main()
