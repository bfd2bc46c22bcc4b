"""Experiment tracking where researchers look: each round's metrics, the per-group accuracies and the run's config,
logged to TensorBoard, MLflow or Weights & Biases inside the run directory. Nothing leaves the machine: TensorBoard
writes event files, MLflow a SQLite store (``<run>/mlflow.db``), W&B an offline run (``<run>/wandb/offline-run-*``);
point a viewer at them (``tensorboard --logdir studies/<name>``, ``mlflow ui --backend-store-uri
sqlite:///<run>/mlflow.db``), or upload the W&B run yourself (``wandb sync <run>/wandb/offline-run-*``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Protocol

import yaml

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_EXPERIMENT = "fedkd"
WANDB_DIR = "wandb"  # wandb.init(dir=<run>) writes <run>/wandb/offline-run-<time>-<id>/run-<id>.wandb


class Tracker(Protocol):
    def log_round(self, server_round: int, record: dict) -> None: ...

    def close(self) -> None: ...


def round_scalars(record: dict) -> dict[str, float]:
    """The numbers of one metrics.jsonl record worth a curve: test and validation scores, every group's test
    accuracy, the distillation loss, the teachers' means, the privacy spent and the bytes moved."""
    out: dict[str, float] = {}
    for split in ("test", "val"):
        for key, value in record.get(split, {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{split}/{key}"] = float(value)
    for group, value in record.get("test", {}).get("per_group_accuracy", {}).items():
        out[f"test_group/{group}"] = float(value)
    for key in ("distill_loss", "teacher_mean_accuracy", "teacher_mean_worst_group_accuracy", "epsilon_spent"):
        if isinstance(record.get(key), int | float):
            out[key] = float(record[key])
    for key in ("bytes_up", "bytes_down"):
        if isinstance(record.get("communication", {}).get(key), int | float):
            out[f"communication/{key}"] = float(record["communication"][key])
    return {k: v for k, v in out.items() if math.isfinite(v)}


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: the config as the flat parameters trackers index."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class TensorBoardTracker:
    """Scalars per round under ``<run>/tensorboard``; the config as text (tab TEXT) and as hyperparameters."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log_round(self, server_round: int, record: dict) -> None:
        for name, value in round_scalars(record).items():
            self.writer.add_scalar(name, value, server_round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def mlflow_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"


class MlflowTracker:
    """One MLflow run per fedkd run in the SQLite store ``<run>/mlflow.db`` (MLflow's file store is deprecated):
    the flattened config as parameters, each round's scalars as metrics at step = round."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_uri(run_dir))
        experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(MLFLOW_EXPERIMENT)
        self.run_id = self.client.create_run(experiment_id, run_name=str(config.get("name", run_dir.name))).info.run_id
        params = [Param(key, value[:6000]) for key, value in flat_params(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_round(self, server_round: int, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(name.replace("/", "."), value, now, server_round)
                                                    for name, value in round_scalars(record).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    """One offline W&B run per fedkd run (``mode="offline"``: written to disk, never sent; no system-metrics
    sampling): the config as the run's config, each round's scalars at step = round."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        import wandb

        self.run = wandb.init(mode="offline", dir=str(run_dir), project=MLFLOW_EXPERIMENT,
                              name=str(config.get("name", run_dir.name)), config=config,
                              settings=wandb.Settings(silent=True, x_disable_stats=True, save_code=False))

    def log_round(self, server_round: int, record: dict) -> None:
        self.run.log(round_scalars(record), step=server_round)

    def close(self) -> None:
        self.run.finish()


def make_tracker(name: str, run_dir: Path, config: dict[str, Any]) -> Tracker | None:
    """The run's tracker (``logger`` in conf/config.yaml); None for ``none``."""
    if name == "tensorboard":
        return TensorBoardTracker(run_dir, config)
    if name == "mlflow":
        return MlflowTracker(run_dir, config)
    if name == "wandb":
        return WandbTracker(run_dir, config)
    return None
