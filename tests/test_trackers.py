"""logger=tensorboard|mlflow|wandb: a real run's rounds, per-group accuracies and config, read back with each library's
own reader, equal what metrics.jsonl and config.yaml hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import FAST

from clients.app import app as client_app
from fedkd.config import ConfigError
from fedkd.results import CONFIG_FILE, read_metrics
from fedkd.trackers import TENSORBOARD_DIR, WANDB_DIR, mlflow_uri
from fedkd.validation import load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid


def _run(tmp_path: Path, logger: str) -> tuple[Path, list[dict]]:
    cfg = load_run_config([*FAST, f"logger={logger}", f"runs_dir={tmp_path}"])
    summary = run_federation(InProcessGrid(client_app, cfg.federation.num_clients), cfg)
    return Path(summary["run_dir"]), read_metrics(summary["run_dir"])


def test_tensorboard_holds_every_round_and_group_and_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, records = _run(tmp_path, "tensorboard")
    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for name in ("accuracy", "worst_group_accuracy"):
        scalars = events.Scalars(f"test/{name}")
        assert [e.step for e in scalars] == [r["round"] for r in records]
        assert [e.value for e in scalars] == pytest.approx([r["test"][name] for r in records], rel=1e-6)  # float32
    group = next(iter(records[-1]["test"]["per_group_accuracy"]))
    assert events.Scalars(f"test_group/{group}")[-1].value == pytest.approx(
        records[-1]["test"]["per_group_accuracy"][group])
    assert [e.step for e in events.Scalars("val/worst_group_accuracy")] == [r["round"] for r in records]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "aggregator:" in text and "num_rounds: 2" in text


def test_mlflow_holds_every_round_and_the_config_as_parameters(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir, records = _run(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=mlflow_uri(run_dir))
    (run,) = client.search_runs([client.get_experiment_by_name("fedkd").experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "test.accuracy")
    history = sorted(history, key=lambda m: m.step)
    assert [m.step for m in history] == [r["round"] for r in records]
    assert [m.value for m in history] == [r["test"]["accuracy"] for r in records]
    config = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    assert run.data.params["aggregator.name"] == config["aggregator"]["name"]
    assert run.data.params["federation.num_clients"] == "3"


def test_wandb_holds_every_round_offline_and_the_config(tmp_path):
    """Read back with W&B's own reader of its transaction log (what ``wandb sync`` uploads)."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    run_dir, records = _run(tmp_path, "wandb")
    (log,) = (run_dir / WANDB_DIR).glob("offline-run-*/run-*.wandb")  # offline: a local file, nothing sent
    store = datastore.DataStore()
    store.open_for_scan(str(log))
    history, config = [], {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif record.WhichOneof("record_type") == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    assert [h["_step"] for h in history] == [r["round"] for r in records]
    assert [h["test/accuracy"] for h in history] == [r["test"]["accuracy"] for r in records]
    group = next(iter(records[-1]["test"]["per_group_accuracy"]))
    assert history[-1][f"test_group/{group}"] == records[-1]["test"]["per_group_accuracy"][group]
    written = yaml.safe_load((run_dir / CONFIG_FILE).read_text())
    assert config["aggregator"] == written["aggregator"] and config["federation"]["num_clients"] == 3


def test_an_unknown_logger_is_refused_before_anything_starts():
    with pytest.raises(ConfigError, match="logger"):
        load_run_config([*FAST, "logger=wandbx"])
