"""Bad input gets one clear error naming the key, before any process starts."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from fedkd.config import ConfigError
from fedkd.validation import client_job, load_run_config, parse_client_job


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["dataset=imagenet"], "dataset"),
        (["dataset.name=imagenet"], "dataset.name"),
        (["aggregator=median"], "aggregator"),
        (["aggregator.name=median"], "aggregator.name"),
        (["dataset.bias_ratio=1.0"], "dataset.bias_ratio"),
        (["dataset.bias_ratio=0"], "dataset.bias_ratio"),
        (["dataset.bias_ratio=1.5"], "dataset.bias_ratio"),
        (["federation.num_clients=100000"], "federation.num_clients"),
        (["federation.num_clients=0"], "federation.num_clients"),
        (["federation.num_clients=-2"], "federation.num_clients"),
        (["federation.num_rounds=0"], "federation.num_rounds"),
        (["federation.num_rounds=-1"], "federation.num_rounds"),
        (["student.temperature=0"], "student.temperature"),
        (["student.temperature=-1.5"], "student.temperature"),
        (["teacher.arch=resnet9000"], "teacher.arch"),
        (["+dataset.bias_ratoi=0.9"], "dataset.bias_ratoi"),
        (["teacher.lr=fast"], "teacher.lr"),
        (["federation.num_rounds=2.5"], "federation.num_rounds"),
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha"),
        (["query=bald"], "query"),
        (["query=random", "query.per_round=0"], "query.per_round"),
        (["query=random", "query.per_round=2.5"], "query.per_round"),
        (["query=random", "query.total=-1"], "query.total"),
        (["query.per_round=0.5"], "query.per_round"),
        (["query.compression=zip"], "query.compression"),
        (["query.compression=topk", "query.top_k=10"], "query.top_k"),
        (["query.top_k=0"], "query.top_k"),
        (["student.min_steps=-1"], "student.min_steps"),
        (["student.min_steps=2.5"], "student.min_steps"),
        (["teacher.lr=inf"], "teacher.lr"),  # non-finite floats silently gave NaN losses
        (["dataset.color_std=nan"], "dataset.color_std"),
        (["dataset=mnist_lt", "dataset.imbalance=inf"], "dataset.imbalance"),
        (["aggregator=mean", "+aggregator.biased=fixed_client"], "aggregator.biased"),  # another choice's key
        (["student.beta=0.7"], "student.beta"),  # a robust_kd key on the kd student
        (["aggregator=agre", "aggregator.biased=fixed_client", "aggregator.biased_client=10"],
         "aggregator.biased_client"),
    ],
)
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_run_config(overrides)
    assert key in str(info.value)


def test_defaults_are_valid_and_round_trip_to_clients():
    cfg = load_run_config([])
    assert cfg.dataset.name == "cmnist" and cfg.federation.num_clients == 10
    # the default pipeline (docs/results.md): AGRE-KD against the mean of the ERM bases, prior-corrected
    assert (cfg.aggregator.name, cfg.aggregator.biased, cfg.aggregator.prior_correction) == ("agre", "mean_bases", True)
    job = client_job(cfg)
    assert job.erm_base  # AGRE-KD asks for the ERM bases
    assert parse_client_job(job.to_yaml()) == job


def test_client_job_round_trips_with_component_parameters():
    """Each section of the job comes back as its component's own parameter class, values included."""
    cfg = load_run_config(["teacher=dfr", "teacher.dfr_steps=7", "partition=dirichlet", "partition.alpha=2.0",
                           "dataset=mnist_lt", "dataset.imbalance=5"])
    job = parse_client_job(client_job(cfg).to_yaml())
    assert (type(job.teacher).__name__, job.teacher.dfr_steps) == ("DfrTeacherConfig", 7)
    assert (type(job.partition).__name__, job.partition.alpha) == ("DirichletConfig", 2.0)
    assert (type(job.dataset).__name__, job.dataset.imbalance) == ("MnistLongTailConfig", 5.0)
    assert job == client_job(cfg)


def test_cli_rejects_bad_input_before_starting_anything(tmp_path):
    """The `fedkd` command exits 2 with the key in the message, quickly, and creates no run directory."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedkd", "federation.num_rounds=0", f"runs_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "federation.num_rounds" in proc.stdout + proc.stderr
    assert "ray" not in (proc.stdout + proc.stderr).lower()
    assert list(tmp_path.iterdir()) == []
    assert time.perf_counter() - start < 60


def test_registry_refuses_duplicates_and_names_the_known_entries():
    from fedkd.aggregators import AGGREGATORS

    with pytest.raises(KeyError, match="registered twice"):
        AGGREGATORS.register("mean")(object)
    with pytest.raises(KeyError, match=r"unknown aggregator 'median'; known: \[.*'mean'.*\]"):
        AGGREGATORS["median"]
