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


# Tests that start Ray, Flower's processes or a subprocess run of fedkd: `make test` runs the suite on two pytest-xdist
# workers (--dist loadgroup) and keeps these on one of them, so that two such runs never share the machine's cores
PROCESS_TEST_FILES = frozenset({"test_deploy.py", "test_e2e_flower.py", "test_console.py", "test_stopping.py",
                                "test_sweep.py", "test_fault_tolerance.py"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in PROCESS_TEST_FILES:
            item.add_marker(pytest.mark.xdist_group("processes"))


@pytest.fixture
def fast_config(tmp_path) -> RunConfig:
    return load_run_config([*FAST, f"runs_dir={tmp_path}"])
