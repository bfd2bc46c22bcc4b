"""Sweeps: `fedkd -m` (Hydra multirun) runs every combination, one after another, each in its own run directory
under one sweep folder; `engine=inprocess` runs the same apps without Ray."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import yaml

from fedkd.results import read_metrics, read_summary

FAST = ["teacher=erm", "baselines.server_only=false", "federation.num_clients=2", "federation.num_rounds=2",
        "teacher.epochs=1",
        "baselines.ensemble=false"]


def test_a_sweep_of_two_aggregators_and_two_seeds_runs_from_one_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedkd", "-m", "engine=inprocess", "aggregator=mean,agre",
                           "seed=0,1", *FAST, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0_cmnist_mean_s0", "1_cmnist_mean_s1", "2_cmnist_agre_s0", "3_cmnist_agre_s1"]
    for run, (aggregator, seed) in zip(runs, [("mean", 0), ("mean", 1), ("agre", 0), ("agre", 1)], strict=True):
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["aggregator"]["name"], config["seed"], config["engine"]) == (aggregator, seed, "inprocess")
        summary = read_summary(run)
        assert summary["run_dir"] == str(run) and summary["seed"] == seed and summary["aggregator"] == aggregator
        assert [r["round"] for r in read_metrics(run)] == [1, 2]
    # seeds differ, and the same seed under another aggregator trains the same teachers
    first = {p.name: read_metrics(p)[0] for p in runs}
    assert first["0_cmnist_mean_s0"]["teachers"] != first["1_cmnist_mean_s1"]["teachers"]
    assert first["0_cmnist_mean_s0"]["teachers"] == first["2_cmnist_agre_s0"]["teachers"]
    assert not (tmp_path / "runs").exists()  # a sweep writes under its sweep folder only

    # `fedkd report` turns the sweep into the table (checked against the runs' summary.json) and the plots
    report = subprocess.run([sys.executable, "-m", "fedkd", "report", str(tmp_path / "sweep"), "--out",
                             str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert "4 runs in 2 groups (0 skipped)" in report.stdout
    with open(tmp_path / "report" / "report.csv", newline="") as f:
        rows = {row["group"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == ["aggregator=agre", "aggregator=mean"]
    for aggregator in ("mean", "agre"):
        tests = [read_summary(p)["test"] for p in runs if f"_{aggregator}_" in p.name]
        row = rows[f"aggregator={aggregator}"]
        assert row["n"] == "2" and row["seeds"] == "0 1"
        for key in ("accuracy", "worst_group_accuracy", "mean_group_accuracy"):
            values = np.array([t[key] for t in tests])
            assert float(row[f"{key}_mean"]) == values.mean()
            assert np.isclose(float(row[f"{key}_std"]), values.std(ddof=1), rtol=0, atol=1e-12)
    assert len({float(rows[g]["accuracy_mean"]) for g in rows}) == 2  # trained students, not chance twice
    for plot in ("rounds.png", "per_group_accuracy.png", "pareto.png", "teacher_weights_aggregator_agre.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 10_000, plot
    assert not (tmp_path / "report" / "query_budget.png").exists()
    assert not (tmp_path / "report" / "privacy_utility.png").exists()


def test_a_sweep_refuses_to_write_into_a_used_job_folder(tmp_path):
    (tmp_path / "sweep" / "0_cmnist_mean_s0").mkdir(parents=True)
    (tmp_path / "sweep" / "0_cmnist_mean_s0" / "metrics.jsonl").write_text("keep me\n")
    proc = subprocess.run([sys.executable, "-m", "fedkd", "-m", "engine=inprocess", "aggregator=mean", *FAST,
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "is not empty" in proc.stdout.replace("\n", "")
    assert (tmp_path / "sweep" / "0_cmnist_mean_s0" / "metrics.jsonl").read_text() == "keep me\n"
