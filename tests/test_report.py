"""``fedkd report``: the table's numbers against the runs' own summary.json files, grouping, the files and plots
written, skipped incomplete runs and the CLI entry; real tiny runs for the common path, hand-written run
directories for the sweeps (query budget, privacy, β) that real runs would take too long to make."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FAST
from matplotlib.image import imread
from rich.console import Console

from clients.app import app as client_app
from fedkd.report import (
    Group,
    Run,
    beta_curves,
    build_report,
    default_out,
    find_run_dirs,
    flatten,
    group_runs,
    main,
    table_rows,
    teacher_weight_matrix,
    varying_keys,
)
from fedkd.validation import load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid, TrainedTeacherCache

ROOT = Path(__file__).resolve().parent.parent
# small MLPs: the real runs only need to be real, not good; a few rounds of learning keep the numbers non-trivial
TINY = [*FAST, "teacher.arch=mlp", "student.arch=mlp", "teacher.epochs=2", "student.epochs=2",
        "baselines.ensemble=false"]
COMMON_PLOTS = {"rounds.png", "per_group_accuracy.png", "pareto.png", "teacher_weights_aggregator_agre.png"}


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """aggregator mean and agre x seeds 0 and 1 (one teacher training per seed, shared by both aggregators), and
    one killed run (config and metrics, no summary)."""
    root = tmp_path_factory.mktemp("runs")
    cache = TrainedTeacherCache(client_app)
    for aggregator in ("mean", "agre"):
        for seed in (0, 1):
            cfg = load_run_config([*TINY, f"aggregator={aggregator}", f"seed={seed}", f"runs_dir={root}"])
            run_federation(InProcessGrid(cache, 3), cfg, console=Console(file=io.StringIO()))
    first = sorted(root.glob("*/*"))[0]
    killed = first.parent / "23-59-59_killed"
    killed.mkdir()
    shutil.copy(first / "config.yaml", killed / "config.yaml")
    (killed / "metrics.jsonl").write_text((first / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    return root


@pytest.fixture(scope="module")
def built(runs_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    console = Console(file=io.StringIO(), width=200)
    return build_report([str(runs_root)], out, console), console.file.getvalue(), out


def _summaries(root: Path) -> dict[str, list[dict]]:
    """The finished runs' summary.json files by aggregator, read directly."""
    by_aggregator: dict[str, list[dict]] = {}
    for path in sorted(root.rglob("summary.json")):
        summary = json.loads(path.read_text())
        by_aggregator.setdefault(summary["aggregator"], []).append(summary)
    return by_aggregator


def test_table_numbers_are_mean_and_sample_std_of_the_summaries(runs_root, built):
    report, text, out = built
    expected = _summaries(runs_root)
    rows = {row["aggregator.name"]: row for row in table_rows(report.groups)}
    with open(out / "report.csv", newline="") as f:
        csv_rows = {row["aggregator.name"]: row for row in csv.DictReader(f)}
    markdown = (out / "report.md").read_text()
    assert set(rows) == set(csv_rows) == set(expected) == {"mean", "agre"}
    for aggregator, summaries in expected.items():
        assert rows[aggregator]["n"] == int(csv_rows[aggregator]["n"]) == 2
        cells = []
        for key in ("accuracy", "worst_group_accuracy", "mean_group_accuracy"):
            values = np.array([s["test"][key] for s in summaries])
            mean, std = values.mean(), values.std(ddof=1)
            assert rows[aggregator][f"{key}_mean"] == pytest.approx(mean, abs=1e-12)
            assert rows[aggregator][f"{key}_std"] == pytest.approx(std, abs=1e-12)
            assert float(csv_rows[aggregator][f"{key}_mean"]) == pytest.approx(mean, abs=1e-12)
            assert float(csv_rows[aggregator][f"{key}_std"]) == pytest.approx(std, abs=1e-12)
            cells.append(f"{mean:.4f} ± {std:.4f}")
        queried = np.mean([s["communication"]["soft_labels_queried"] for s in summaries])
        assert float(csv_rows[aggregator]["soft_labels_queried_mean"]) == queried
        assert f"| `aggregator={aggregator}` | 2 | 0 1 | {' | '.join(cells)} |" in markdown
        assert all(cell in text for cell in cells)  # the printed table
    assert "epsilon_spent_mean" not in csv_rows["mean"]  # no run has privacy on


def test_groups_are_the_differing_override_not_the_seed(built):
    report, _, _ = built
    assert [g.overrides for g in report.groups] == [{"aggregator.name": "agre"}, {"aggregator.name": "mean"}]
    assert [g.label for g in report.groups] == ["aggregator=agre", "aggregator=mean"]
    assert [g.seeds for g in report.groups] == [[0, 1], [0, 1]]


def test_plots_the_runs_allow_are_valid_pngs_and_no_others(built):
    report, text, out = built
    written = {p.name for p in report.files}
    assert written == {"report.csv", "report.md", *COMMON_PLOTS}
    assert not (out / "query_budget.png").exists() and not (out / "privacy_utility.png").exists()
    for name in COMMON_PLOTS:
        image = imread(out / name)
        assert (out / name).stat().st_size > 0 and image.shape[0] > 100 and image.shape[1] > 100


def test_teacher_weight_heatmap_is_the_mean_over_seeds_of_the_logged_teacher_weights(runs_root, built):
    report, _, _ = built
    agre = next(g for g in report.groups if g.overrides == {"aggregator.name": "agre"})
    logged = []
    for path in sorted(runs_root.rglob("metrics.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        if records[0]["aggregator"] == "agre" and (path.parent / "summary.json").exists():
            assert all(r["participants"] == [0, 1, 2] for r in records)
            logged.append([r["aggregator_stats"]["mean_weight_per_teacher"] for r in records])  # [round, teacher]
    clients, rounds, matrix = teacher_weight_matrix(agre)
    assert (clients, rounds, len(logged)) == ([0, 1, 2], [1, 2], 2)
    np.testing.assert_allclose(matrix, np.mean(logged, axis=0).T, rtol=1e-12)
    assert all(not teacher_weight_matrix(g)[0] for g in report.groups if g is not agre)


def test_teacher_weights_follow_the_participants_of_each_round():
    weights = "mean_weight_per_teacher"
    records = [{"round": 1, "aggregator_stats": {weights: [0.2, 0.3, 0.5]}, "participants": [0, 1, 2]},
               {"round": 2, "aggregator_stats": {weights: [0.6, 0.4]}, "participants": [0, 2]}]
    runs = [Run(Path(f"/r{s}"), {"seed": s}, {}, records) for s in (0, 1)]
    clients, rounds, matrix = teacher_weight_matrix(Group({}, runs))
    assert (clients, rounds) == ([0, 1, 2], [1, 2])
    np.testing.assert_array_equal(matrix, [[0.2, 0.6], [0.3, np.nan], [0.5, 0.4]])  # client 1 dropped in round 2


def test_incomplete_run_is_skipped_with_a_warning(built):
    report, text, out = built
    assert [p.name for p, _ in report.skipped] == ["23-59-59_killed"]
    assert "warning: skipped" in text and "23-59-59_killed" in text and "no summary.json" in text
    assert "23-59-59_killed" in (out / "report.md").read_text()
    assert sum(len(g.runs) for g in report.groups) == 4


def test_fedkd_report_command(runs_root, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "fedkd", "report", str(runs_root), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fedkd report: final students" in done.stdout and "aggregator=agre" in done.stdout
    assert "4 runs in 2 groups (1 skipped)" in done.stdout
    assert str(out / "pareto.png") in done.stdout and (out / "report.csv").is_file()


def test_fedkd_report_without_runs_fails_clearly(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no finished run directory" in capsys.readouterr().out
    assert default_out([str(tmp_path)]) == tmp_path / "report"
    assert default_out(["runs/*/*agre*"]) == Path("report")


def test_flatten_and_varying_keys_on_hand_made_configs():
    a = {"seed": 0, "name": "a_s0", "runs_dir": "/r1", "dataset": {"name": "cmnist", "data_root": "/d1"},
         "aggregator": {"name": "mean", "biased": "x"}, "student": {"beta": 0.5, "layers": [1, 2]}}
    b = {"seed": 1, "name": "b_s1", "runs_dir": "/r2", "dataset": {"name": "cmnist", "data_root": "/d2"},
         "aggregator": {"name": "agre", "biased": "x"}, "student": {"beta": 0.5, "layers": [1, 2]}, "extra_dir": "q"}
    assert flatten(a) == {"seed": 0, "name": "a_s0", "runs_dir": "/r1", "dataset.name": "cmnist",
                          "dataset.data_root": "/d1", "aggregator.name": "mean", "aggregator.biased": "x",
                          "student.beta": 0.5, "student.layers": (1, 2)}
    assert varying_keys([flatten(a), flatten(b)]) == ["aggregator.name"]
    c = {**b, "student": {"beta": 1.0, "layers": [1, 2]}, "federation": {"num_rounds": 3}}
    # a key only some configs have follows their choices: it varies only where the configs that have it disagree
    assert varying_keys([flatten(a), flatten(b), flatten(c)]) == ["aggregator.name", "student.beta"]
    d = {**c, "federation": {"num_rounds": 5}}
    assert varying_keys([flatten(a), flatten(c), flatten(d)]) == ["aggregator.name", "federation.num_rounds",
                                                                  "student.beta"]


def test_a_parameter_of_one_choice_labels_only_the_runs_that_have_it():
    """mean has no ``biased``; agre's two values of it are two groups, and the mean group is labelled by its
    name alone."""
    def config(seed: int, aggregator: dict) -> dict:
        return {"seed": seed, "name": f"r{seed}", "aggregator": aggregator}

    runs = [_run(config(0, {"name": "mean"})), _run(config(1, {"name": "agre", "biased": "mean_bases"})),
            _run(config(2, {"name": "agre", "biased": "fixed_client"})), _run(config(3, {"name": "mean"}))]
    assert [g.label for g in group_runs(runs)] == ["aggregator=agre aggregator.biased=fixed_client",
                                                   "aggregator=agre aggregator.biased=mean_bases",
                                                   "aggregator=mean"]
    assert [g.seeds for g in group_runs(runs)] == [[2], [1], [0, 3]]
    assert [g.label for g in group_runs(runs[:2] + runs[3:])] == ["aggregator=agre", "aggregator=mean"]


def _run(config: dict, accuracy: float = 0.5, wga: float = 0.2, **summary) -> Run:
    return Run(Path(f"/runs/{config['name']}"), config,
               {"test": {"accuracy": accuracy, "worst_group_accuracy": wga}, **summary}, [])


def test_group_runs_orders_values_numerically_and_averages_over_seeds():
    runs = [_run({"seed": s, "name": f"b{beta}_s{s}", "student": {"beta": beta}}, accuracy=beta + s / 10)
            for beta in (10.0, 0.5, 2.0) for s in (1, 0)]
    groups = group_runs(runs)
    assert [g.overrides for g in groups] == [{"student.beta": 0.5}, {"student.beta": 2.0}, {"student.beta": 10.0}]
    assert [g.seeds for g in groups] == [[0, 1]] * 3
    assert groups[0].label == "student.beta=0.5"
    row = table_rows(groups)[0]
    assert row["accuracy_mean"] == pytest.approx(0.55) and row["accuracy_std"] == pytest.approx(np.std([.5, .6],
                                                                                                     ddof=1))
    single = table_rows(group_runs([runs[0]]))[0]
    assert single["group"] == "all runs" and single["n"] == 1 and np.isnan(single["accuracy_std"])


def test_beta_curves_are_ordered_by_beta_per_setting_of_the_other_keys():
    groups = [Group({"aggregator.name": a, "student.beta": b}, []) for a in ("mean", "agre") for b in (1.0, 0.0, 0.5)]
    groups.append(Group({"aggregator.name": "vote", "student.beta": 0.5}, []))
    lines = beta_curves(groups)
    assert list(lines) == ["aggregator=mean", "aggregator=agre"]  # a lone point is no curve
    assert [[g.overrides["student.beta"] for g in members] for members in lines.values()] == [[0.0, 0.5, 1.0]] * 2
    assert beta_curves([Group({"aggregator.name": "mean"}, [])]) == {}


def _fake_run(root: Path, name: str, seed: int, sections: dict, accuracy: float, wga: float,
              epsilon: float | None = None, queried: int = 100) -> None:
    """A finished run directory written by hand: config.yaml, summary.json and metrics.jsonl of two rounds."""
    path = root / "2026-01-01" / f"00-00-0{seed}_{name}"
    path.mkdir(parents=True)
    config = {"seed": seed, "name": name, "runs_dir": str(root), "federation": {"num_rounds": 2}, **sections}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    test = {"accuracy": accuracy, "worst_group_accuracy": wga, "mean_group_accuracy": (accuracy + wga) / 2,
            "per_group_accuracy": {"g0": accuracy, "g1": wga}}
    (path / "summary.json").write_text(json.dumps({
        "test": test, "epsilon_spent": epsilon,
        "communication": {"soft_labels_queried": queried, "uplink_ratio_to_fedavg": queried / 1000}}))
    records = [{"round": r, "test": {**test, "accuracy": accuracy * r / 2}, "aggregator_stats": {},
                "participants": [0, 1]} for r in (1, 2)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_query_budget_plot_from_hand_written_runs(tmp_path):
    for strategy in ("random", "margin"):
        for budget in (0.1, 0.5):
            for seed in (0, 1):
                _fake_run(tmp_path, f"{strategy}{budget}", seed,
                          {"query": {"name": strategy, "per_round": budget}, "privacy": {"name": "none"}},
                          accuracy=0.5 + budget / 2 + seed / 100, wga=budget / (2 if strategy == "random" else 1.5),
                          queried=int(1000 * budget))
    report = build_report([str(tmp_path)], tmp_path / "out", Console(file=io.StringIO()))
    names = {p.name for p in report.files}
    assert "query_budget.png" in names and "privacy_utility.png" not in names
    assert "teacher_weights" not in " ".join(names)  # no run has AGRE-KD weights
    assert imread(tmp_path / "out" / "query_budget.png").shape[0] > 100


def test_privacy_and_beta_plots_from_hand_written_runs(tmp_path):
    for mechanism, epsilons in (("central_gaussian", (1.0, 8.0)), ("gnmax", (1.0, 8.0)), ("none", (None,))):
        for eps in epsilons:
            for seed in (0, 1):
                _fake_run(tmp_path, f"{mechanism}{eps}", seed, {"privacy": {"name": mechanism, "epsilon": eps}},
                          accuracy=0.9 if eps is None else 0.5 + eps / (20 if mechanism == "gnmax" else 30),
                          wga=0.3 + seed / 20, epsilon=eps)
    for beta in (0.0, 1.0, 0.5):
        _fake_run(tmp_path / "beta", f"beta{beta}", 0, {"student": {"objective": "robust_kd", "beta": beta}},
                  accuracy=0.8 - beta / 4, wga=0.2 + beta / 4)
    privacy = build_report([str(tmp_path / "2026-01-01")], tmp_path / "p", Console(file=io.StringIO()))
    assert "privacy_utility.png" in {p.name for p in privacy.files}
    assert imread(tmp_path / "p" / "privacy_utility.png").shape[0] > 100
    assert [p.name for p in find_run_dirs([str(tmp_path / "beta" / "*" / "*beta0.5")])] == ["00-00-00_beta0.5"]
    beta = build_report([str(tmp_path / "beta")], tmp_path / "b", Console(file=io.StringIO()))
    assert [g.overrides["student.beta"] for g in beta.groups] == [0.0, 0.5, 1.0]
    assert "pareto.png" in {p.name for p in beta.files}
    assert imread(tmp_path / "b" / "pareto.png").shape[0] > 100
