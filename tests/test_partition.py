"""Client partitions: disjoint, covering, seeded, identical in every process (node)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from fedkd.data import federated_data
from fedkd.data.benchmarks import BENCHMARKS
from fedkd.data.partition import PARTITIONERS, PartitionError, partition_pool


def _labels(n: int = 1000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


@pytest.mark.parametrize("cfg", [PARTITIONERS.config("iid"), PARTITIONERS.config("dirichlet", alpha=0.3)])
def test_partitions_are_disjoint_and_cover_the_pool(cfg):
    y = _labels()
    parts = partition_pool(y, y, cfg, num_clients=7, seed=3)
    joined = np.concatenate(parts)
    assert len(parts) == 7
    assert len(joined) == len(y) and np.array_equal(np.sort(joined), np.arange(len(y)))


def test_iid_sizes_balanced_and_seed_dependent():
    y = _labels()
    parts = partition_pool(y, y, PARTITIONERS.config("iid"), 8, seed=0)
    assert {len(p) for p in parts} == {125}
    again = partition_pool(y, y, PARTITIONERS.config("iid"), 8, seed=0)
    other = partition_pool(y, y, PARTITIONERS.config("iid"), 8, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_small_alpha_skews_labels():
    y = _labels(2000)
    skewed = partition_pool(y, y, PARTITIONERS.config("dirichlet", alpha=0.1, min_partition_size=5), 5, 0)
    even = partition_pool(y, y, PARTITIONERS.config("iid"), 5, 0)

    def mean_max_share(parts):
        return np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts])

    assert mean_max_share(skewed) > 2 * mean_max_share(even)


def test_dirichlet_by_group_uses_groups():
    y = np.zeros(600, dtype=int)
    g = np.repeat(np.arange(3), 200)
    parts = partition_pool(y, g, PARTITIONERS.config("dirichlet", by="group", alpha=0.05, min_partition_size=1),
                           3, 0)
    shares = [np.bincount(g[p], minlength=3).max() / len(p) for p in parts]
    assert np.mean(shares) > 0.7


def test_more_clients_than_examples_is_refused():
    y = _labels(5)
    with pytest.raises(PartitionError, match="6 clients but only 5 examples"):
        partition_pool(y, y, PARTITIONERS.config("iid"), 6, 0)


def _digest(parts) -> str:
    return hashlib.sha256(b"".join(p.tobytes() for p in parts)).hexdigest()


def test_same_seed_gives_same_partitions_in_a_fresh_process():
    """Every node rebuilds the partitions itself; a fresh interpreter must get exactly the same ones."""
    ds, part = BENCHMARKS.config("cmnist"), PARTITIONERS.config("dirichlet", alpha=0.3)
    here = _digest(federated_data(ds, part, 6, 11).partitions)
    code = (
        "from fedkd.data.benchmarks import BENCHMARKS; from fedkd.data.partition import PARTITIONERS;"
        "from fedkd.data import federated_data;"
        "import hashlib;"
        "p = federated_data(BENCHMARKS.config('cmnist'), PARTITIONERS.config('dirichlet', alpha=0.3), 6, 11);"
        "print(hashlib.sha256(b''.join(x.tobytes() for x in p.partitions)).hexdigest())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert here == there


def test_whole_gives_every_client_the_whole_pool():
    y = _labels(50)
    parts = partition_pool(y, y, PARTITIONERS.config("whole"), num_clients=4, seed=0)
    assert len(parts) == 4 and all(np.array_equal(p, np.arange(50)) for p in parts)


def test_privacy_is_refused_when_every_client_holds_every_example():
    from fedkd.config import ConfigError
    from fedkd.validation import load_run_config

    with pytest.raises(ConfigError, match="partition.name.*protects an example held by one client"):
        load_run_config(["partition=whole", "privacy=central_gaussian", "privacy.epsilon=4", "aggregator=mean"])
