"""A partitioner that repeats the data, in a module of its own so that flwr-datasets is imported only when a run
partitions its pool (fedkd.data.partition registers it lazily)."""

from __future__ import annotations

from datasets import Dataset
from flwr_datasets.partitioner import Partitioner


class WholePoolPartitioner(Partitioner):
    """Every partition is the whole dataset: AGRE-KD trains each of its teachers on the entire biased training
    set, with its own seed (Kenfack et al., Sec. 5.1). flwr-datasets has no partitioner that repeats the data."""

    def __init__(self, num_partitions: int) -> None:
        super().__init__()
        self._num_partitions = num_partitions

    @property
    def num_partitions(self) -> int:
        return self._num_partitions

    def load_partition(self, partition_id: int) -> Dataset:
        if not 0 <= partition_id < self._num_partitions:
            raise ValueError(f"partition {partition_id} is outside 0..{self._num_partitions - 1}")
        return self.dataset
