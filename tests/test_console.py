"""The console of a `fedkd` run through Flower's simulation engine: no Flower DEBUG lines and no `run_simulation`
deprecation warning by default, both back with FEDKD_FLOWER_LOG=debug, and Flower's lines once each either way."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fedkd.console import FLOWER_LOG_ENV, RUN_SIMULATION_DEPRECATION

pytestmark = pytest.mark.e2e

TINY = ["aggregator=mean", "teacher=erm", "federation.num_clients=2", "federation.num_rounds=1", "teacher.epochs=1",
        "student.epochs=1", "teacher.arch=mlp", "student.arch=mlp", "baselines.ensemble=false",
        "baselines.server_only=false"]
FLOWER_DEBUG = re.compile(r"^(\x1b\[\d+m)?DEBUG\b", re.MULTILINE)  # Flower's console handler (colours or not)
ROOT_DEBUG = ":DEBUG:"  # the root handler's format (logging.basicConfig, which opacus calls at import)


def _console(tmp_path, flower_log: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in (FLOWER_LOG_ENV, "FLWR_LOG_LEVEL")}
    if flower_log is not None:
        env[FLOWER_LOG_ENV] = flower_log
    proc = subprocess.run([sys.executable, "-m", "fedkd", *TINY, f"runs_dir={tmp_path}"], capture_output=True,
                          text=True, timeout=600, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "fedkd: done in" in output
    return output


def test_flower_debug_lines_and_deprecation_are_off_by_default(tmp_path):
    output = _console(tmp_path, None)
    assert not FLOWER_DEBUG.search(output) and ROOT_DEBUG not in output, output
    assert "DEPRECATED FEATURE" not in output and RUN_SIMULATION_DEPRECATION not in output


def test_fedkd_flower_log_debug_turns_them_on_once_each(tmp_path):
    output = _console(tmp_path, "debug")
    assert FLOWER_DEBUG.search(output) and ROOT_DEBUG not in output, output
    assert output.count(RUN_SIMULATION_DEPRECATION) == 1
