"""The node's on-disk data cache: what it loads equals what a build gives, a changed definition never reuses a
stale folder, a partial or truncated one is rebuilt, and a client trains the same bits from it; and the ClientApp
imports no library that only some methods need."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fedkd.data.cache as cache
from fedkd.data import federated_data
from fedkd.data.benchmarks import Split
from fedkd.local import train_local_teacher
from fedkd.validation import load_run_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def job(tmp_path):
    return load_run_config(["teacher=erm", "federation.num_clients=3", "teacher.epochs=1",
                            f"runs_dir={tmp_path / 'runs'}"]).client_job()


def _load(root: Path, job):
    cache.cached_federated_data.cache_clear()
    return cache.cached_federated_data(root, job.dataset, job.partition, job.num_clients, job.seed)


def _assert_same(got, want) -> None:
    assert got.benchmark.name == want.benchmark.name
    assert got.benchmark.group_names == want.benchmark.group_names
    assert got.benchmark.bias_attribute == want.benchmark.bias_attribute
    assert got.benchmark.description == want.benchmark.description
    assert list(got.benchmark.splits) == list(want.benchmark.splits)
    for name, split in want.benchmark.splits.items():
        for f in dataclasses.fields(Split):
            a, b = getattr(got.benchmark[name], f.name), getattr(split, f.name)
            assert a.dtype == b.dtype and np.array_equal(a, b), (name, f.name)
    assert len(got.partitions) == len(want.partitions)
    assert all(np.array_equal(a, b) for a, b in zip(got.partitions, want.partitions, strict=True))


def test_a_second_process_loads_what_the_first_built(tmp_path, job, monkeypatch):
    built = federated_data(job.dataset, job.partition, job.num_clients, job.seed)
    _assert_same(_load(tmp_path, job), built)
    (folder,) = tmp_path.iterdir()
    assert (folder / cache.MANIFEST).is_file()

    def no_build(*args):
        raise AssertionError("the data was rebuilt although a complete cache folder exists")

    monkeypatch.setattr(cache, "federated_data", no_build)
    loaded = _load(tmp_path, job)
    _assert_same(loaded, built)
    assert isinstance(loaded.benchmark["pool"].x, np.memmap)  # read lazily, not copied into memory


def test_a_changed_definition_never_reuses_a_stale_folder(tmp_path, job):
    _load(tmp_path, job)
    changed = dataclasses.replace(job.dataset, bias_ratio=0.5)
    assert cache.data_key(changed, job.partition, 3, job.seed) != cache.data_key(job.dataset, job.partition, 3,
                                                                               job.seed)
    for other in (cache.data_key(job.dataset, job.partition, 4, job.seed),
                  cache.data_key(job.dataset, job.partition, 3, job.seed + 1)):
        assert other != cache.data_key(job.dataset, job.partition, 3, job.seed)
    cache.cached_federated_data.cache_clear()
    got = cache.cached_federated_data(tmp_path, changed, job.partition, job.num_clients, job.seed)
    _assert_same(got, federated_data(changed, job.partition, job.num_clients, job.seed))
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("damage", ["truncate an array", "drop the manifest", "garble the manifest"])
def test_a_partial_or_corrupt_folder_is_rebuilt(tmp_path, job, damage):
    built = federated_data(job.dataset, job.partition, job.num_clients, job.seed)
    _load(tmp_path, job)
    (folder,) = tmp_path.iterdir()
    target = folder / "pool.x.npy"
    full_size = target.stat().st_size
    if damage == "truncate an array":
        with target.open("r+b") as f:
            f.truncate(full_size // 2)
    elif damage == "drop the manifest":
        (folder / cache.MANIFEST).unlink()
    else:
        (folder / cache.MANIFEST).write_text("{not json")
    assert cache._read(folder) is None
    _assert_same(_load(tmp_path, job), built)
    assert target.stat().st_size == full_size and cache._read(folder) is not None


def test_a_client_trains_the_same_bits_from_the_cache(tmp_path, job):
    cache.cached_federated_data.cache_clear()
    plain_state, plain_report = train_local_teacher(job, 1, 1, None)
    train_local_teacher(job, 1, 1, None, data_cache=tmp_path)  # builds and writes the folder
    cache.cached_federated_data.cache_clear()  # as a fresh process would: load it from disk
    state, report = train_local_teacher(job, 1, 1, None, data_cache=tmp_path)
    assert report == plain_report
    for part, tensors in plain_state.items():
        assert all(torch.equal(tensors[k], state[part][k]) for k in tensors), part


def test_the_client_app_imports_no_library_only_some_methods_need():
    code = ("import sys, clients.app; print(sorted(m for m in ('opacus', 'sklearn', 'datasets', 'flwr_datasets', "
            "'matplotlib', 'hydra', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
