"""Partition the client pool across clients with flwr-datasets partitioners (IID, Dirichlet), or give every
client the whole pool (AGRE-KD's setting: teachers that differ only in their seed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fedkd.config import PartitionConfig, non_negative, one_of, positive
from fedkd.registry import Registry

if TYPE_CHECKING:  # flwr-datasets imports Hugging Face datasets and pyarrow: seconds a client need not pay on a
    from flwr_datasets.partitioner import Partitioner  # cached data build (fedkd.data.cache)

PARTITIONERS = Registry("partitioner", section="partition", params=PartitionConfig)


@dataclass(frozen=True)
class DirichletConfig(PartitionConfig):
    by: str = field(default="label", metadata=one_of("label", "group"))
    alpha: float = field(default=0.5, metadata=positive())
    min_partition_size: int = field(default=10, metadata=non_negative())
    self_balancing: bool = False


@dataclass(frozen=True)
class WholePoolConfig(PartitionConfig):
    repeats_examples: ClassVar[bool] = True


def _iid(cfg: PartitionConfig, num_clients: int, seed: int) -> Partitioner:
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=num_clients)


def _dirichlet(cfg: DirichletConfig, num_clients: int, seed: int) -> Partitioner:
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=num_clients,
        partition_by=cfg.by,
        alpha=cfg.alpha,
        min_partition_size=cfg.min_partition_size,
        self_balancing=cfg.self_balancing,
        shuffle=True,
        seed=seed,
    )


def _whole(cfg: PartitionConfig, num_clients: int, seed: int) -> Partitioner:
    from fedkd.data.whole_pool import WholePoolPartitioner

    return WholePoolPartitioner(num_clients)


PARTITIONERS.register("iid")(_iid)
PARTITIONERS.register("dirichlet", params=DirichletConfig)(_dirichlet)
PARTITIONERS.register("whole", params=WholePoolConfig)(_whole)


class PartitionError(ValueError):
    """The pool cannot be split as configured (too few examples, Dirichlet retries exhausted, ...)."""


def partition_pool(
    labels: np.ndarray, groups: np.ndarray, cfg: PartitionConfig, num_clients: int, seed: int
) -> list[np.ndarray]:
    """Pool indices of every client, covering the pool (disjoint unless the partitioner repeats the data),
    identical for the same seed.

    The pool is shuffled with the seed first (flwr-datasets' IID partitioner takes contiguous shards).
    """
    if num_clients > len(labels):
        raise PartitionError(f"{num_clients} clients but only {len(labels)} examples in the client pool")
    from datasets import Dataset

    order = np.random.default_rng(np.random.SeedSequence([seed, 7])).permutation(len(labels))
    table = Dataset.from_dict(
        {"index": order.tolist(), "label": labels[order].tolist(), "group": groups[order].tolist()}
    )
    partitioner = PARTITIONERS[cfg.name](cfg, num_clients, seed)
    partitioner.dataset = table
    try:
        parts = [np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))
                 for i in range(num_clients)]
    except ValueError as err:
        raise PartitionError(f"{cfg.name} partitioning failed: {err}") from err
    return parts
