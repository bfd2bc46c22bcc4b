"""Shared fixtures: configs composed from the real conf/ tree with test-sized overrides."""

from __future__ import annotations

import pytest

from fedkd.config import RunConfig
from fedkd.validation import load_run_config

FAST = [
    "aggregator=mean",  # the plain pipeline; tests that need another aggregator say so (the demo default is agre)
    "teacher=erm",  # DFR's refit costs two thirds of a run; the tests of DFR, the combinations and the demo run it
    "federation.num_clients=3",
    "federation.num_rounds=2",
    "teacher.epochs=1",
    "student.epochs=1",
    "federation.client_cpus=2",  # in-process clients on both cores (results do not depend on the engine)
]


@pytest.fixture
def fast_config(tmp_path) -> RunConfig:
    return load_run_config([*FAST, f"runs_dir={tmp_path}"])
