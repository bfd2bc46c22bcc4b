"""Shared fixtures: configs composed from the real conf/ tree with test-sized overrides."""

from __future__ import annotations

import os

import pytest
import torch

from fedkd.config import RunConfig
from fedkd.validation import load_run_config

# Under pytest-xdist (`make test` runs three workers on two cores), each worker and the processes it starts use one
# thread: workers on two threads each would only contend (a thread that loses its core stalls the other at every
# barrier), while one thread each lets a worker's waits (process starts, Ray, timeouts, heartbeats) overlap the
# others' computing. Results are compared within a worker, so they agree.
WORKER_THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if WORKER_THREADS == 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

FAST = [
    "aggregator=mean",  # the plain pipeline; tests that need another aggregator say so (the demo default is agre)
    "teacher=erm",  # DFR's refit costs two thirds of a run; the tests of DFR, the combinations and the demo run it
    "federation.num_clients=3",
    "federation.num_rounds=2",
    "teacher.epochs=1",
    "student.epochs=1",
    f"federation.client_cpus={WORKER_THREADS}",  # in-process clients on the worker's cores (engine-independent)
    "baselines.server_only=false",  # cross-validates seven recipes; tests/test_server_only.py and the demo run it
]


@pytest.fixture
def fast_config(tmp_path) -> RunConfig:
    return load_run_config([*FAST, f"runs_dir={tmp_path}"])
