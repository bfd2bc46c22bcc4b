"""The run directory: resolved config, per-round metrics, final predictions, student weights, summary.

A run never overwrites an existing directory: a name that is taken gets a numeric suffix.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml

from fedkd.config import RunConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
DISCARDED_METRICS_FILE = "metrics.discarded.jsonl"
PREDICTIONS_FILE = "predictions.csv"
PROBABILITIES_FILE = "probabilities.npy"  # the kept student's class probabilities on test (AUROC, calibration)
STUDENT_FILE = "student.pt"
CLIENT_JOB_FILE = "client_job.yaml"  # the job every client trained (what `fedkd audit` finds their teachers by)
QUERIED_FILE = "queried.npy"  # the transfer points the teachers answered (the others: the audit's non-members)
SUMMARY_FILE = "summary.json"


@contextlib.contextmanager
def writing(path: Path) -> Iterator[Path]:
    """Name ``path`` in an OSError raised while writing it (a write on a full disk raises one without a name)."""
    try:
        yield path
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from err


def write_text_whole(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` (named by this process: parallel jobs may write the same
    file) and rename it into place, so that a reader sees the old file or the new one, never a cut one."""
    with writing(path):
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)


class RunDirectory:
    """One run's folder under ``runs/<date>/<time>_<name>/``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, runs_dir: str | Path, name: str, now: datetime | None = None) -> RunDirectory:
        now = now or datetime.now()
        parent = Path(runs_dir) / now.strftime("%Y-%m-%d")
        parent.mkdir(parents=True, exist_ok=True)
        stem = f"{now.strftime('%H-%M-%S')}_{name}"
        for attempt in range(1000):
            path = parent / (stem if attempt == 0 else f"{stem}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path)
        raise FileExistsError(f"no free run directory name for {parent / stem}")

    def write_config(self, cfg: RunConfig) -> None:
        with writing(self.path / CONFIG_FILE) as path:
            path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def append_metrics(self, record: dict) -> None:
        with writing(self.path / METRICS_FILE) as path, open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def set_aside_metrics_after(self, server_round: int) -> None:
        """Keep the metrics lines of rounds up to ``server_round``; later ones (written after the checkpoint a
        resume starts from) and a line cut short by a kill move to ``metrics.discarded.jsonl``, so nothing written
        is lost."""
        path = self.path / METRICS_FILE
        if not path.exists():
            return
        kept, later = [], []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                later.append(line)  # only the last line can be cut: every line is appended whole
                continue
            (kept if record["round"] <= server_round else later).append(line)
        if not later:
            return
        with open(self.path / DISCARDED_METRICS_FILE, "a") as f:
            f.write("".join(line + "\n" for line in later))
        write_text_whole(path, "".join(line + "\n" for line in kept))

    def write_predictions(self, split: str, y: np.ndarray, g: np.ndarray, pred: np.ndarray) -> None:
        with writing(self.path / PREDICTIONS_FILE) as path, open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["split", "index", "y", "g", "pred"])
            for i, row in enumerate(zip(y.tolist(), g.tolist(), pred.tolist(), strict=True)):
                writer.writerow([split, i, *row])

    def write_probabilities(self, probabilities: np.ndarray) -> None:
        """The kept student's softmax on the test split, one row per predictions.csv row, float32."""
        with writing(self.path / PROBABILITIES_FILE) as path, open(path, "wb") as f:
            np.save(f, probabilities.astype(np.float32))

    def write_client_job(self, job_yaml: str) -> None:
        with writing(self.path / CLIENT_JOB_FILE) as path:
            path.write_text(job_yaml)

    def write_queried(self, indices: np.ndarray) -> None:
        """The transfer indices any teacher was asked about over the run, sorted, int64."""
        with writing(self.path / QUERIED_FILE) as path, open(path, "wb") as f:
            np.save(f, np.asarray(indices, dtype=np.int64))

    def save_student(self, state_dict: dict) -> None:
        with writing(self.path / STUDENT_FILE) as path:
            torch.save(state_dict, path)

    def write_summary(self, summary: dict) -> None:
        """Written last and renamed into place whole: a run directory with a summary is a finished run."""
        write_text_whole(self.path / SUMMARY_FILE, json.dumps(summary, indent=2))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All round records of a run, in order; a last line cut short (a kill or a full disk while it was written)
    is not a record."""
    lines = [line for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    with contextlib.suppress(json.JSONDecodeError, IndexError):
        records.append(json.loads(lines[-1]))
    return records


def read_predictions(run_dir: str | Path, split: str = "test") -> dict[str, np.ndarray]:
    """Columns index, y, g, pred of one split of predictions.csv."""
    with open(Path(run_dir) / PREDICTIONS_FILE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return {k: np.array([int(r[k]) for r in rows]) for k in ("index", "y", "g", "pred")}


def read_probabilities(run_dir: str | Path) -> np.ndarray | None:
    """The test probabilities of a run; None for a run written before they were kept."""
    path = Path(run_dir) / PROBABILITIES_FILE
    return np.load(path) if path.is_file() else None


def read_summary(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
