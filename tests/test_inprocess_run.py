"""The round loop driven by the in-process grid: shapes, files, WGA consistency, reproducibility."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import torch
import yaml
from conftest import FAST

from clients.app import app as client_app
from fedkd.data import federated_data
from fedkd.metrics import worst_group_accuracy
from fedkd.models import build_model
from fedkd.results import RunDirectory, read_metrics, read_predictions, read_summary
from fedkd.training import predict_logits
from fedkd.validation import load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid, TrainedTeacherCache


def _run(cfg):
    return run_federation(InProcessGrid(client_app, cfg.federation.num_clients), cfg)


def test_inprocess_run_writes_a_consistent_run_directory(fast_config):
    summary = _run(fast_config)
    run_dir = summary["run_dir"]
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [1, 2]
    last = records[-1]
    assert len(last["teachers"]) == 3 and {t["partition_id"] for t in last["teachers"]} == {0, 1, 2}
    assert set(last["test"]["per_group_accuracy"]) == set(last["test"]["group_counts"])
    assert sum(last["test"]["group_counts"].values()) == 1000
    pred = read_predictions(run_dir)
    assert len(pred["y"]) == 1000 and np.array_equal(pred["index"], np.arange(1000))
    assert last["test"]["worst_group_accuracy"] == worst_group_accuracy(pred["pred"], pred["y"], pred["g"])
    assert read_summary(run_dir)["test"] == last["test"]
    with open(f"{run_dir}/config.yaml") as f:
        assert yaml.safe_load(f) == fast_config.to_dict()
    # the saved student reproduces the saved predictions
    bench = federated_data(fast_config.dataset, fast_config.partition, 3, fast_config.seed).benchmark
    student = build_model(fast_config.student.arch, bench.input_shape, bench.num_classes, seed=123)
    student.load_state_dict(torch.load(f"{run_dir}/student.pt"))
    assert np.array_equal(predict_logits(student, bench["test"].x).argmax(1).numpy(), pred["pred"])


def test_long_tailed_dirichlet_federation(tmp_path):
    # label skew: the plain mean (AGRE-KD, the default, collapses under Dirichlet shards; docs/results.md)
    cfg = load_run_config(["aggregator=mean", "teacher=erm", "dataset=mnist_lt", "partition=dirichlet",
                           "partition.alpha=0.3", "federation.num_clients=5", "baselines.server_only=false",
                           f"runs_dir={tmp_path}"])
    summary = _run(cfg)
    records = read_metrics(summary["run_dir"])
    assert [r["round"] for r in records] == [1, 2, 3] and len(records[-1]["teachers"]) == 5
    pred = read_predictions(summary["run_dir"])
    assert records[-1]["test"]["worst_group_accuracy"] == worst_group_accuracy(pred["pred"], pred["y"], pred["g"])
    assert summary["test"]["accuracy"] > 0.5  # 10 balanced classes: chance is 0.1


def test_colored_mnist_default_run_is_non_degenerate(tmp_path):
    # the default pipeline; its server-only references are tested in tests/test_server_only.py and by the demo
    cfg = load_run_config(["federation.num_clients=4", "federation.num_rounds=2", "baselines.server_only=false",
                           f"runs_dir={tmp_path}"])
    summary = _run(cfg)
    assert [r["round"] for r in read_metrics(summary["run_dir"])] == [1, 2]
    assert summary["test"]["accuracy"] > 0.3  # chance 0.1
    assert len(summary["test"]["group_counts"]) == 20
    assert summary["aggregator"] == "agre"  # the default pipeline: AGRE-KD with the federated options


def test_same_config_and_seed_same_metrics(fast_config):
    first = read_metrics(_run(fast_config)["run_dir"])
    second = read_metrics(_run(fast_config)["run_dir"])
    for a, b in zip(first, second, strict=True):
        a.pop("wall_seconds"), b.pop("wall_seconds")
        assert a == b


def test_run_directory_is_never_reused(tmp_path):
    now = datetime(2026, 1, 2, 3, 4, 5)
    first = RunDirectory.create(tmp_path, "x", now)
    (first.path / "metrics.jsonl").write_text("keep me\n")
    second = RunDirectory.create(tmp_path, "x", now)
    assert first.path != second.path and second.path.name == "03-04-05_x-1"
    assert (first.path / "metrics.jsonl").read_text() == "keep me\n"


def _metrics_without_time(run_dir):
    records = read_metrics(run_dir)
    for r in records:
        r.pop("wall_seconds")
    return records


def test_trained_teacher_cache_reuses_teachers_and_changes_no_number(tmp_path):
    # erm teachers: agre asks for the ERM base, mean does not; both share the same trained teachers
    mean_cfg = load_run_config([*FAST, f"runs_dir={tmp_path}"])
    agre_cfg = load_run_config([*FAST, f"runs_dir={tmp_path}", "aggregator=agre"])
    cache = TrainedTeacherCache(client_app)
    cached = [_metrics_without_time(run_federation(InProcessGrid(cache, 3), cfg)["run_dir"])
              for cfg in (mean_cfg, agre_cfg, mean_cfg)]
    assert (cache.misses, cache.hits) == (3 * 2, 2 * 3 * 2)  # 3 clients x 2 rounds trained once, reused twice
    fresh = [_metrics_without_time(_run(cfg)["run_dir"]) for cfg in (mean_cfg, agre_cfg)]
    assert cached[0] == fresh[0] and cached[1] == fresh[1] and cached[2] == fresh[0]
    # the repeated mean run found every answer stored: at least each client's transfer query of each round
    assert cache.query_hits >= 3 * 2


def test_trained_teacher_cache_answers_again_when_the_request_differs(tmp_path):
    cache = TrainedTeacherCache(client_app)
    configs = [load_run_config([*FAST, f"runs_dir={tmp_path}", f"query.compression={c}"]) for c in ("fp32", "int8")]
    cached = [_metrics_without_time(run_federation(InProcessGrid(cache, 3), cfg)["run_dir"]) for cfg in configs]
    assert cache.hits == 3 * 2 and cache.query_hits == 0  # same teachers, but no fp32 answer serves an int8 query
    assert cached[1] == _metrics_without_time(_run(configs[1])["run_dir"])


def test_trained_teacher_cache_keys_on_the_base_when_it_costs_training(tmp_path):
    cache = TrainedTeacherCache(client_app)
    for aggregator in ("mean", "agre"):
        cfg = load_run_config([*FAST, f"runs_dir={tmp_path}", "teacher=balanced", f"aggregator={aggregator}"])
        run_federation(InProcessGrid(cache, 3), cfg)
    assert (cache.misses, cache.hits) == (2 * 3 * 2, 0)  # balanced trains a separate ERM base only for agre


def test_query_budget_is_respected_end_to_end_and_points_are_not_asked_twice(tmp_path):
    cfg = load_run_config([*FAST, f"runs_dir={tmp_path}", "query=margin", "query.per_round=40", "query.total=100",
                           "query.compression=int8"])
    summary = _run(cfg)
    records = read_metrics(summary["run_dir"])
    assert [r["query"]["num_new"] for r in records] == [40, 40]
    assert [r["query"]["pool_size"] for r in records] == [40, 80]
    cfg = load_run_config([*FAST, f"runs_dir={tmp_path}", "query=random", "query.per_round=70", "query.total=100",
                           "federation.num_rounds=3"])
    records = read_metrics(_run(cfg)["run_dir"])
    assert [r["query"]["num_new"] for r in records] == [70, 30, 0]  # the total cap stops the third round
    assert records[-1]["query"]["soft_labels_queried"] == 100


def test_communication_is_accounted_per_client_and_summed(fast_config):
    summary = _run(fast_config)
    records = read_metrics(summary["run_dir"])
    for r in records:
        comm = r["communication"]
        assert set(comm["bytes_up"]) == {"0", "1", "2"}
        # every client sends its logits of the whole transfer pool (float32) each round, plus framing
        pool = len(federated_data(fast_config.dataset, fast_config.partition, 3, 0).benchmark["transfer"])
        assert all(pool * 10 * 4 < b < pool * 10 * 4 + 2048 for b in comm["bytes_up"].values())
        assert comm["bytes_up_total"] == sum(comm["bytes_up"].values())
    total = summary["communication"]
    assert total["bytes_up_total"] == sum(r["communication"]["bytes_up_total"] for r in records)
    assert total["fedavg_bytes_total"] == 2 * 3 * records[0]["communication"]["fedavg_bytes_per_client"]
