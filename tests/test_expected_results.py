"""scripts/expected_results.py: the README block is rendered from summary.json and metrics.jsonl, replaced in
place; the check passes a figure that moved within its band, and fails on one that moved beyond it or on any
changed count or label. Hand-written summaries, no run, except the last test: the real demo must pass the
check against README.md, and with a broken aggregator fail it."""

from __future__ import annotations

import copy
import json
import os
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
TEACHERS = [{"num_examples": 285}] * 3 + [{"num_examples": 284}]
ROUNDS = [{"round": 1, "test": {"accuracy": 0.222, "worst_group_accuracy": 0.0}, "teacher_mean_accuracy": 0.3785,
           "teacher_mean_worst_group_accuracy": 0.0356, "wall_seconds": 17.0, "teachers": TEACHERS},
          {"round": 2, "test": {"accuracy": 0.591, "worst_group_accuracy": 1 / 3}, "teacher_mean_accuracy": 0.5444,
           "teacher_mean_worst_group_accuracy": 0.2478, "wall_seconds": 6.2, "teachers": TEACHERS}]
README = f"# fedkd\n\nintro\n\n{er.BEGIN}\nold block\n{er.END}\n\n## next section\n"


def test_the_block_holds_the_summary_figures_and_no_wall_time_or_path():
    block = er.render_block(SUMMARY, ROUNDS)
    assert er.COMMAND in block
    for text in ("| 2 | 0.5910 | 0.3333 | 0.5444 | 0.2478 |", "| student accuracy | 0.5910 |",
                 "0.3333 (digit5-conflicting)", "| student worst-class accuracy | 0.3800 |",
                 "0.3333 (digit5-conflicting) / 1.0000 (digit0-aligned and 1 more)",
                 "| teachers' best / worst worst-group accuracy | 0.3556 / 0.1333 |",
                 "| ensemble: accuracy / worst-group accuracy | 0.6230 / 0.4667 |",
                 "| test split: images in groups (fewest / most images in a group) | 200 in 4 (10 / 90) |",
                 "| clients' shard sizes (images) | 284 ×1, 285 ×3 |"):
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


def _band(tmp_path: Path, block: str, **others: str) -> Path:
    """A band file: the demo's seed under every kernel, ``block`` natively, ``others`` by kernel (else ``block``)."""
    path = tmp_path / "band.jsonl"
    path.write_text("".join(json.dumps({"kernel": k, "seed": 0, "block": others.get(k, block)}) + "\n"
                            for k in er.KERNELS))
    return path


def test_check_exits_1_naming_the_figure_out_of_band_with_the_diff(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(er.replace_block(README, er.render_block(SUMMARY, ROUNDS)))
    band = _band(tmp_path, er.render_block(SUMMARY, ROUNDS))
    monkeypatch.setattr(er, "run_demo", lambda overrides: (SUMMARY, ROUNDS))
    assert er.main(["--check", "--readme", str(readme), "--band", str(band)]) == 0
    changed = copy.deepcopy(SUMMARY)
    changed["test"]["accuracy"] = 0.7
    monkeypatch.setattr(er, "run_demo", lambda overrides: (changed, ROUNDS))
    assert er.main(["--check", "--readme", str(readme), "--band", str(band)]) == 1
    err = capsys.readouterr().err
    assert "student accuracy · value: 0.7000 against 0.5910 committed, outside 0.5910" in err
    assert "+| student accuracy | 0.7000 |" in err
    assert er.main(["--readme", str(readme), "--band", str(band)]) == 0
    assert "| student accuracy | 0.7000 |" in readme.read_text()
    assert "the check needs the band of the new block" in capsys.readouterr().out


def test_check_refuses_a_band_measured_for_another_block(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(er.replace_block(README, er.render_block(SUMMARY, ROUNDS)))
    monkeypatch.setattr(er, "run_demo", lambda overrides: pytest.fail("the demo runs only once the band is known good"))
    other = _band(tmp_path, _moved(("test", "accuracy"), 0.6))
    assert er.main(["--check", "--readme", str(readme), "--band", str(other)]) == 2
    assert "no native seed-0 run equal to the committed block" in capsys.readouterr().err
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"kernel": "native", "seed": 0, "block": er.render_block(SUMMARY, ROUNDS)}) + "\n")
    assert er.main(["--check", "--readme", str(readme), "--band", str(partial)]) == 2
    assert "no seed-0 run under the kernels" in capsys.readouterr().err


def _moved(path: tuple, value: float) -> str:
    changed = copy.deepcopy(SUMMARY)
    *parents, key = path
    node = changed
    for p in parents:
        node = node[p]
    node[key] = value
    return er.render_block(changed, ROUNDS)


def test_the_band_passes_a_figure_within_its_margin_and_names_one_beyond_it():
    block = er.render_block(SUMMARY, ROUNDS)
    assert er.band_problems(block, block) == []
    split, group = er.MARGIN_SPLIT, er.MARGIN_GROUP
    assert split < group
    # the student's accuracy is a whole-split figure, its worst-group accuracy a one-group figure
    assert er.band_problems(block, _moved(("test", "accuracy"), 0.591 + 0.9 * split)) == []
    (problem,) = er.band_problems(block, _moved(("test", "accuracy"), 0.591 + 1.5 * split))
    assert problem.startswith("student accuracy · value:") and f"by more than {split:.2f}" in problem
    assert er.band_problems(block, _moved(("test", "worst_group_accuracy"), 1 / 3 + 0.9 * group)) == []
    problems = er.band_problems(block, _moved(("test", "worst_group_accuracy"), 1 / 3 - 1.5 * group))
    assert problems and all(f"by more than {group:.2f}" in p for p in problems)
    # the ensemble's row holds one figure of each kind
    ensemble = ("baselines", "ensemble")
    assert er.band_problems(block, _moved((*ensemble, "worst_group_accuracy"), 0.4667 + 1.5 * split)) == []
    assert er.band_problems(block, _moved((*ensemble, "accuracy"), 0.623 + 1.5 * split))


def test_the_band_is_the_range_measured_across_kernels_widened_by_the_margin():
    block, split = er.render_block(SUMMARY, ROUNDS), er.MARGIN_SPLIT
    other_kernel = _moved(("test", "accuracy"), 0.631)  # another kernel's run gave 0.631
    assert er.band_problems(block, _moved(("test", "accuracy"), 0.631 + 0.9 * split), (other_kernel,)) == []
    assert er.band_problems(block, _moved(("test", "accuracy"), 0.591 - 0.9 * split), (other_kernel,)) == []
    (problem,) = er.band_problems(block, _moved(("test", "accuracy"), 0.631 + 1.5 * split), (other_kernel,))
    assert "outside 0.5910 to 0.6310 (measured across 2 kernels)" in problem
    assert er.band_problems(block, _moved(("test", "accuracy"), 0.591 - 1.5 * split), (other_kernel,))
    recounted = copy.deepcopy(SUMMARY)
    recounted["test"]["group_counts"]["digit1-aligned"] = 11
    with pytest.raises(ValueError, match="measure the band again"):
        er.band_problems(block, block, (er.render_block(recounted, ROUNDS),))


def test_the_band_ignores_which_group_is_worst_but_not_a_changed_count_or_setting():
    block = er.render_block(SUMMARY, ROUNDS)
    renamed = copy.deepcopy(SUMMARY)
    renamed["test"]["worst_group"] = "digit0-conflicting"
    assert er.band_problems(block, er.render_block(renamed, ROUNDS)) == []
    recounted = copy.deepcopy(SUMMARY)
    recounted["test"]["group_counts"]["digit1-aligned"] = 11
    assert er.band_problems(block, er.render_block(recounted, ROUNDS))[0].startswith("the block's text differs")
    reseeded = copy.deepcopy(SUMMARY)
    reseeded["seed"] = 1
    assert er.band_problems(block, er.render_block(reseeded, ROUNDS))
    shorter = [dict(r, teachers=TEACHERS[:3]) for r in ROUNDS]
    assert er.band_problems(block, er.render_block(SUMMARY, shorter))


def test_check_passes_within_the_band_and_rewrites_nothing(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(er.replace_block(README, er.render_block(SUMMARY, ROUNDS)))
    before = readme.read_text()
    band = _band(tmp_path, er.render_block(SUMMARY, ROUNDS))
    nearby = copy.deepcopy(SUMMARY)
    nearby["test"]["accuracy"] = 0.592
    monkeypatch.setattr(er, "run_demo", lambda overrides: (nearby, ROUNDS))
    assert er.main(["--check", "--readme", str(readme), "--band", str(band)]) == 0
    assert "within the band" in capsys.readouterr().out
    assert readme.read_text() == before


def test_the_committed_band_belongs_to_the_committed_block():
    """README.md's block and docs/expected_results_band.jsonl move together: the band's native run of the demo's
    seed is the block, and every kernel has its run."""
    measured = er.measured_band(er.BAND, er.read_block(er.README.read_text()), er.DEMO_SEED)
    assert len(measured) == len(er.KERNELS) - 1


def test_the_margins_cover_a_second_cpu():
    """The margins are what one more CPU needs: every run of docs/expected_results_band_amd_epyc.jsonl (an AMD EPYC
    under the same seven caps, on the committed block's code) lies within the committed band of its seed. When the
    block changes, measure that file again on a second CPU or remove it and say so in docs/reproducibility.md."""
    other_cpu = er.BAND.with_name("expected_results_band_amd_epyc.jsonl")
    runs = [json.loads(line) for line in other_cpu.read_text().splitlines()]
    band = [json.loads(line) for line in er.BAND.read_text().splitlines()]
    checked = 0
    for seed in er.BAND_SEEDS:
        (native,) = [r["block"] for r in band if r["seed"] == seed and r["kernel"] == "native"]
        measured = tuple(r["block"] for r in band if r["seed"] == seed and r["kernel"] != "native")
        for run in (r for r in runs if r["seed"] == seed):
            assert er.band_problems(native, run["block"], measured) == [], (run["kernel"], seed)
            checked += 1
    assert checked == 2 * len(er.KERNELS)
    # the first margins did not cover it: round 2's student accuracy under aten_default lay 0.023 outside
    (native,) = [r["block"] for r in band if r["seed"] == 0 and r["kernel"] == "native"]
    measured = tuple(r["block"] for r in band if r["seed"] == 0 and r["kernel"] != "native")
    (aten_default,) = [r["block"] for r in runs if r["seed"] == 0 and r["kernel"] == "aten_default"]
    assert er.band_problems(native, aten_default, measured, margin_split=0.02, margin_group=0.07)


BREAK_AGGREGATOR = '''
import fedkd.aggregators.agre as agre

_cosine = agre.cosine
# a sign slip: AGRE-KD now favours the teachers that agree with the biased model
agre.cosine = lambda a, b: -_cosine(a, b)
'''


def test_the_readme_block_matches_a_fresh_demo_run_and_a_broken_aggregator_fails_it(tmp_path, monkeypatch, capsys):
    """`make test`'s check of README.md's expected results: the demo now, against the committed block; then the
    demo with AGRE-KD's similarity sign flipped by a sitecustomize module the demo's process imports, on the same
    stored teachers (the flip is on the server): the committed block must no longer match."""
    store = ("--teacher-store", str(tmp_path / "teachers"))
    assert er.main(["--check", *store]) == 0, capsys.readouterr().err
    assert any((tmp_path / "teachers").iterdir())
    (tmp_path / "sitecustomize.py").write_text(BREAK_AGGREGATOR)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    assert er.main(["--check", *store]) == 1
    err = capsys.readouterr().err
    assert "does not match a fresh run" in err and "student accuracy" in err
