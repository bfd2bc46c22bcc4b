"""scripts/expected_results.py: the README block is rendered from summary.json and metrics.jsonl, replaced in
place, and a changed number shows up in the diff. Hand-written summaries, no run."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import expected_results as er  # noqa: E402

SUMMARY = {
    "dataset": "cmnist", "aggregator": "agre", "teacher_objective": "erm", "student_objective": "kd",
    "num_clients": 10, "num_rounds": 2, "seed": 0,
    "test": {"accuracy": 0.591, "worst_group_accuracy": 1 / 3, "worst_group": "digit5-conflicting",
             "mean_group_accuracy": 0.7417, "worst_class_accuracy": 0.38,
             "per_group_accuracy": {"digit5-conflicting": 1 / 3, "digit1-aligned": 1.0, "digit0-aligned": 1.0,
                                    "digit0-conflicting": 0.6444},
             "group_counts": {"digit5-conflicting": 90, "digit1-aligned": 10, "digit0-aligned": 10,
                              "digit0-conflicting": 90}},
    "teachers": {"mean_accuracy": 0.5444, "mean_worst_group_accuracy": 0.2478, "best_worst_group_accuracy": 0.3556,
                 "worst_worst_group_accuracy": 0.1333},
    "baselines": {"ensemble": {"accuracy": 0.623, "worst_group_accuracy": 0.4667}},
    "epsilon_spent": None, "wall_seconds": 33.2, "run_dir": "/tmp/somewhere/runs/x",
}
ROUNDS = [{"round": 1, "test": {"accuracy": 0.222, "worst_group_accuracy": 0.0}, "teacher_mean_accuracy": 0.3785,
           "teacher_mean_worst_group_accuracy": 0.0356, "wall_seconds": 17.0},
          {"round": 2, "test": {"accuracy": 0.591, "worst_group_accuracy": 1 / 3}, "teacher_mean_accuracy": 0.5444,
           "teacher_mean_worst_group_accuracy": 0.2478, "wall_seconds": 6.2}]
README = f"# fedkd\n\nintro\n\n{er.BEGIN}\nold block\n{er.END}\n\n## next section\n"


def test_the_block_holds_the_summary_figures_and_no_wall_time_or_path():
    block = er.render_block(SUMMARY, ROUNDS)
    assert er.COMMAND in block
    for text in ("| 2 | 0.5910 | 0.3333 | 0.5444 | 0.2478 |", "| student accuracy | 0.5910 |",
                 "0.3333 (digit5-conflicting)", "| student worst-class accuracy | 0.3800 |",
                 "0.3333 (digit5-conflicting) / 1.0000 (digit0-aligned and 1 more)",
                 "| teachers' best / worst worst-group accuracy | 0.3556 / 0.1333 |",
                 "| ensemble: accuracy / worst-group accuracy | 0.6230 / 0.4667 |"):
        assert text in block
    assert "33.2" not in block and "17.0" not in block and "/tmp/somewhere" not in block
    assert "privacy" not in block


def test_replace_then_read_gives_the_block_back_and_keeps_the_rest():
    block = er.render_block(SUMMARY, ROUNDS)
    text = er.replace_block(README, block)
    assert er.read_block(text) == block
    assert text.startswith("# fedkd\n\nintro\n\n") and text.endswith("\n\n## next section\n")
    assert er.replace_block(text, block) == text
    assert er.block_diff(text, block) == ""


@pytest.mark.parametrize("path, value", [(("test", "accuracy"), 0.592), (("teachers", "mean_accuracy"), 0.5445),
                                         (("baselines", "ensemble", "worst_group_accuracy"), 0.4556)])
def test_a_changed_number_is_detected(path, value):
    text = er.replace_block(README, er.render_block(SUMMARY, ROUNDS))
    changed = copy.deepcopy(SUMMARY)
    *parents, key = path
    node = changed
    for p in parents:
        node = node[p]
    node[key] = value
    diff = er.block_diff(text, er.render_block(changed, ROUNDS))
    assert diff.startswith("--- README.md (committed)\n+++ fresh run")
    assert "+| " in diff and f"{value:.4f}" in diff


def test_a_changed_round_is_detected_but_a_wall_time_is_not():
    text = er.replace_block(README, er.render_block(SUMMARY, ROUNDS))
    slower = copy.deepcopy(ROUNDS)
    slower[0]["wall_seconds"] = 99.0
    assert er.block_diff(text, er.render_block(SUMMARY, slower)) == ""
    slower[0]["test"]["worst_group_accuracy"] = 0.0111
    assert "+| 1 | 0.2220 | 0.0111 |" in er.block_diff(text, er.render_block(SUMMARY, slower))


@pytest.mark.parametrize("text", ["no markers", f"{er.END}\n{er.BEGIN}", f"{er.BEGIN}\n{er.BEGIN}\n{er.END}"])
def test_missing_or_misordered_markers_are_an_error(text):
    with pytest.raises(ValueError, match="expected one"):
        er.read_block(text)


def test_check_exits_1_with_the_diff_when_the_committed_block_differs(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(er.replace_block(README, er.render_block(SUMMARY, ROUNDS)))
    monkeypatch.setattr(er, "run_demo", lambda: (SUMMARY, ROUNDS))
    assert er.main(["--check", "--readme", str(readme)]) == 0
    changed = copy.deepcopy(SUMMARY)
    changed["test"]["accuracy"] = 0.6
    monkeypatch.setattr(er, "run_demo", lambda: (changed, ROUNDS))
    assert er.main(["--check", "--readme", str(readme)]) == 1
    assert "+| student accuracy | 0.6000 |" in capsys.readouterr().err
    assert er.main(["--readme", str(readme)]) == 0
    assert "| student accuracy | 0.6000 |" in readme.read_text()
