"""A node's built federated data on disk, so that a process that lives for one message (a deployment's
``flwr-clientapp``) loads its benchmark instead of rebuilding it and importing what building needs.

One folder per data definition under ``<root>/<key>``: every array of every split as ``.npy`` (loaded
memory-mapped, copy-on-write, so a client reads only the pages of its shard and the splits it evaluates), and
``manifest.json`` written last, which names every array with its shape and dtype. The key hashes the whole
definition (dataset config, partition config, number of clients, seed) and the source of ``fedkd/data``, so a
changed definition or a changed builder is a new folder. A folder without a manifest, or whose arrays do not
match it (a truncated file), is rebuilt, never trusted. Writers build in a private folder and rename it into
place, so concurrent nodes never read a half-written one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedkd.config import DatasetConfig, PartitionConfig
from fedkd.data import FederatedData, federated_data
from fedkd.data.splits import Benchmark, Split

FORMAT = 1
MANIFEST = "manifest.json"
DATA_CACHE_ENV = "FEDKD_DATA_CACHE_DIR"


@lru_cache(maxsize=1)
def _builder_source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def data_key(dataset: DatasetConfig, partition: PartitionConfig, num_clients: int, seed: int) -> str:
    """The cache key of a data definition: equal definitions built by equal code share it, any change is new."""
    definition = {"format": FORMAT, "dataset": [type(dataset).__qualname__, dataclasses.asdict(dataset)],
                  "partition": [type(partition).__qualname__, dataclasses.asdict(partition)],
                  "num_clients": num_clients, "seed": seed, "builder": _builder_source_hash()}
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=repr).encode()).hexdigest()[:32]


def _arrays(data: FederatedData) -> dict[str, np.ndarray]:
    out = {f"{name}.{f.name}": getattr(split, f.name) for name, split in data.benchmark.splits.items()
           for f in dataclasses.fields(Split)}
    out.update({f"partition.{i}": part for i, part in enumerate(data.partitions)})
    return out


def _write(folder: Path, data: FederatedData) -> bool:
    """Write ``data`` under ``folder`` (a fresh private folder, renamed into place); False when it cannot be
    written exactly (a description that JSON would change)."""
    bench = data.benchmark
    meta = {"name": bench.name, "num_classes": bench.num_classes, "group_names": list(bench.group_names),
            "description": bench.description, "bias_attribute": bench.bias_attribute,
            "splits": list(bench.splits), "num_partitions": len(data.partitions)}
    try:
        if json.loads(json.dumps(meta)) != meta:
            return False
    except (TypeError, ValueError):
        return False
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    arrays = {}
    for name, array in _arrays(data).items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        arrays[name] = {"shape": list(array.shape), "dtype": array.dtype.str}
    (tmp / MANIFEST).write_text(json.dumps({**meta, "arrays": arrays}))
    try:
        os.rename(tmp, folder)
    except OSError:  # another process put the same data in place first
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _read(folder: Path) -> FederatedData | None:
    """The data under ``folder``, or None when it is missing, partial or does not match its manifest."""
    try:
        meta = json.loads((folder / MANIFEST).read_text())
        arrays = {}
        for name, spec in meta["arrays"].items():
            array = np.load(folder / f"{name}.npy", mmap_mode="c", allow_pickle=False)
            if list(array.shape) != spec["shape"] or array.dtype.str != spec["dtype"]:
                return None
            arrays[name] = array
        splits = {s: Split(**{f.name: arrays[f"{s}.{f.name}"] for f in dataclasses.fields(Split)})
                  for s in meta["splits"]}
        parts = tuple(np.asarray(arrays[f"partition.{i}"]) for i in range(meta["num_partitions"]))
        bench = Benchmark(name=meta["name"], num_classes=meta["num_classes"], group_names=tuple(meta["group_names"]),
                          splits=splits, description=meta["description"], bias_attribute=meta["bias_attribute"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return FederatedData(benchmark=bench, partitions=parts)


@lru_cache(maxsize=4)
def cached_federated_data(root: Path | None, dataset: DatasetConfig, partition: PartitionConfig, num_clients: int,
                          seed: int) -> FederatedData:
    """``federated_data(...)``, through the on-disk cache under ``root`` when there is one; once per process
    either way."""
    if root is None:
        return federated_data(dataset, partition, num_clients, seed)
    folder = Path(root) / data_key(dataset, partition, num_clients, seed)
    found = _read(folder)
    if found is not None:
        return found
    data = federated_data(dataset, partition, num_clients, seed)
    if folder.exists():  # partial or corrupt: never trusted
        shutil.rmtree(folder, ignore_errors=True)
    _write(folder, data)
    return data
