"""End-to-end runs of the `fedkd` command through Flower's simulation engine (Ray), as a user types them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedkd.metrics import worst_group_accuracy
from fedkd.results import read_metrics, read_predictions, read_summary

pytestmark = pytest.mark.e2e


def _fedkd(tmp_path: Path, *overrides: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "fedkd", *overrides, f"runs_dir={tmp_path}"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    assert "worst-group accuracy" in proc.stdout and str(run_dir) in proc.stdout.replace("\n", "")
    return read_summary(run_dir)


def _check_consistent(summary: dict, rounds: int) -> None:
    records = read_metrics(summary["run_dir"])
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    pred = read_predictions(summary["run_dir"])
    assert records[-1]["test"]["worst_group_accuracy"] == worst_group_accuracy(pred["pred"], pred["y"], pred["g"])


def test_long_tailed_dirichlet_federation(tmp_path):
    # label skew: the plain mean (AGRE-KD, the default, collapses under Dirichlet shards; docs/results.md)
    summary = _fedkd(tmp_path, "aggregator=mean", "dataset=mnist_lt", "partition=dirichlet", "partition.alpha=0.3",
                     "federation.num_clients=5")
    _check_consistent(summary, rounds=3)
    assert summary["num_clients"] == 5
    assert summary["test"]["accuracy"] > 0.5  # 10 balanced classes: chance is 0.1


def test_colored_mnist_default_run_is_non_degenerate(tmp_path):
    summary = _fedkd(tmp_path, "federation.num_clients=4", "federation.num_rounds=2")
    _check_consistent(summary, rounds=2)
    assert summary["test"]["accuracy"] > 0.3  # chance 0.1
    assert len(summary["test"]["group_counts"]) == 20
    assert summary["aggregator"] == "agre"  # the default pipeline: AGRE-KD with the federated options
