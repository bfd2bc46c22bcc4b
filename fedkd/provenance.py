"""Where a result comes from: the commit checked out, whether the code differed from it, the command line, the date
(UTC) and the machine. Every run's summary.json carries it, so a number in a study table can be traced and rerun."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout (a wheel's site-packages has no git)
CODE_PATHS = ("fedkd", "clients", "server", "conf", "bench", "pyproject.toml")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    """The command as typed from the checkout: ``python bench/x.py ...`` for a script, ``fedkd ...`` for the entry
    point."""
    if not sys.argv or not sys.argv[0]:
        return "python"
    script = Path(sys.argv[0]).resolve()
    if script.suffix == ".py":
        head = ["python", str(script.relative_to(SOURCE_ROOT)) if script.is_relative_to(SOURCE_ROOT) else sys.argv[0]]
    else:
        head = [script.name]
    return shlex.join([*head, *sys.argv[1:]])


def _code_state() -> tuple[str, bool | None]:
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return _git("rev-parse", "HEAD") or "unknown", None if status is None else bool(status)


# The code a process runs is the code checked out when it started: a long study must not record the commit made
# while it ran
STARTED_WITH = _code_state()


def provenance() -> dict:
    """The commit this process started from, whether the code (``CODE_PATHS``) differed from it then (None: not a
    git checkout), the command line, the date and the machine."""
    commit, changed = STARTED_WITH
    return {
        "commit": commit,
        "uncommitted_code_changes": changed,
        "command": command_line(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"hostname": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "flwr": importlib.metadata.version("flwr")},
    }
