"""Data: sources, benchmark builders with (x, y, g) splits, and client partitions."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np

from fedkd.config import DatasetConfig, PartitionConfig
from fedkd.data.benchmarks import BENCHMARKS
from fedkd.data.partition import partition_pool
from fedkd.data.splits import Benchmark, Split

__all__ = ["BENCHMARKS", "Benchmark", "FederatedData", "Split", "build_benchmark", "federated_data"]


@lru_cache(maxsize=4)
def build_benchmark(cfg: DatasetConfig, seed: int) -> Benchmark:
    """Build (once per process) the benchmark named by ``cfg.name``; with ``transfer_from=pool`` the pool and
    the transfer split are merged and serve as both (the clients' training images are the public transfer set)."""
    bench = BENCHMARKS[cfg.name](cfg, seed)
    if cfg.transfer_from == "pool":
        pool, transfer = bench["pool"], bench["transfer"]
        merged = Split(**{f.name: np.concatenate([getattr(pool, f.name), getattr(transfer, f.name)])
                          for f in fields(Split)})
        merged = merged.subset(np.argsort(merged.source_index, kind="stable"))
        bench = replace(bench, splits={**bench.splits, "pool": merged, "transfer": merged},
                        description={**bench.description, "transfer_from": "pool"})
    return bench


@dataclass(frozen=True)
class FederatedData:
    """A benchmark plus the pool indices of every client."""

    benchmark: Benchmark
    partitions: tuple[np.ndarray, ...]

    def shard(self, partition_id: int) -> Split:
        """Client ``partition_id``'s slice of the pool."""
        return self.benchmark["pool"].subset(self.partitions[partition_id])


@lru_cache(maxsize=4)
def federated_data(dataset: DatasetConfig, partition: PartitionConfig, num_clients: int, seed: int) -> FederatedData:
    """The benchmark and its client partitions; deterministic in (config, seed), so equal on every node."""
    bench = build_benchmark(dataset, seed)
    pool = bench["pool"]
    parts = partition_pool(pool.y, pool.g, partition, num_clients, seed)
    return FederatedData(benchmark=bench, partitions=tuple(parts))
