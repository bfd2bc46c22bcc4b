"""bench/table1_study.py's report: AE-KD's min-norm rows keep their own row beside the authors' defaults, and the
paired findings (AGRE-KD over all parameters against head-only, AE-KD's two variants) read the rows seed by seed on
the same teachers. Rows are written by hand, nothing is trained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import table1_study as study  # noqa: E402


def _row(method: str, seed: int, accuracy: float, wga: float, bias: float = 0.995, teachers: str = "dfr",
         teacher_wga: float = 0.75) -> dict:
    """A finished paper cell in the jsonl schema; ``teacher_wga`` stands for the seed's teachers."""
    return {"cell": f"paper | {bias} | {teachers} | {method}", "seed": seed, "setting": "paper",
            "bias_ratio": bias, "teachers": teachers, "method": method, "average_accuracy": accuracy,
            "worst_group_accuracy": wga, "worst_group_accuracy_20": wga - 0.1, "references": {
                "teacher_mean": {"average_accuracy": 0.78, "worst_group_accuracy": teacher_wga}}}


def _head_and_all(seeds: list[int]) -> list[dict]:
    """Head-only AGRE-KD at seeds 0-2; the all-parameter one at ``seeds``: WGA +2.0 / -1.0 / +4.0 points and
    average accuracy +1.0 / +3.0 / +2.0 points over head-only at seeds 0 / 1 / 2."""
    head = {0: (0.83, 0.81), 1: (0.84, 0.82), 2: (0.82, 0.80)}
    gain = {0: (0.01, 0.02), 1: (0.03, -0.01), 2: (0.02, 0.04)}
    rows = [_row("agre", seed, *head[seed], teacher_wga=0.7 + seed / 100) for seed in head]
    rows += [_row(study.ALL_PARAMETERS, seed, head[seed][0] + gain[seed][0], head[seed][1] + gain[seed][1],
                  teacher_wga=0.7 + seed / 100) for seed in seeds]
    # the same methods at another bias ratio, which must not pair with the 99.5 % rows
    rows += [_row("agre", 0, 0.5, 0.1, bias=0.99), _row(study.ALL_PARAMETERS, 1, 0.9, 0.9, bias=0.99)]
    return rows


def test_all_parameter_agre_is_paired_with_head_only_seed_by_seed():
    rows = _head_and_all([0, 1])
    pairs, other_teachers = study.paired_by_seed(rows, 0.995, "dfr", study.ALL_PARAMETERS, "agre")
    assert [seed for seed, _, _ in pairs] == [0, 1] and other_teachers == []
    assert [(d_wga, d_acc) for _, d_wga, d_acc in pairs] == [pytest.approx((2.0, 1.0)), pytest.approx((-1.0, 3.0))]
    text = study.paired_line(rows, 0.995, "dfr", study.ALL_PARAMETERS, "agre")
    assert "2 of 3 seeds; 1 still to run" in text
    assert "two-group WGA +0.5 points (seed 0 +2.0, seed 1 -1.0)" in text
    assert "average accuracy +2.0 (seed 0 +1.0, seed 1 +3.0)" in text
    # both means on the paired seeds only (seed 2's head-only row has no partner), then the paper's AGRE-KD
    assert "85.5 / 82.0 against 83.5 / 81.5" in text
    assert "the paper's AGRE-KD with debiased teachers 63.9 / 59.9" in text


def test_the_paired_finding_says_when_every_seed_is_in_and_when_none_is():
    complete = study.paired_line(_head_and_all([0, 1, 2]), 0.995, "dfr", study.ALL_PARAMETERS, "agre")
    assert "all 3 seeds" in complete and "still to run" not in complete
    assert "two-group WGA +1.7 points (seed 0 +2.0, seed 1 -1.0, seed 2 +4.0)" in complete
    empty = study.paired_line(_head_and_all([]), 0.995, "dfr", study.ALL_PARAMETERS, "agre")
    assert "0 of 3 seeds; 3 still to run" in empty and "No seed has both rows yet" in empty and "63.9 / 59.9" in empty


def test_a_seed_whose_rows_ran_on_other_teachers_is_left_unpaired():
    rows = _head_and_all([0, 1])
    rows[4]["references"]["teacher_mean"]["worst_group_accuracy"] = 0.5  # seed 1's all-parameter row
    pairs, other_teachers = study.paired_by_seed(rows, 0.995, "dfr", study.ALL_PARAMETERS, "agre")
    assert [seed for seed, _, _ in pairs] == [0] and other_teachers == [1]
    text = study.paired_line(rows, 0.995, "dfr", study.ALL_PARAMETERS, "agre")
    assert "1 of 3 seeds; 1 on other teachers, 1 still to run" in text and "Seed 1 ran on other teachers" in text
    rows = _head_and_all([0, 1, 2])
    rows[5]["references"]["teacher_mean"]["worst_group_accuracy"] = 0.5  # seed 2's all-parameter row
    text = study.paired_line(rows, 0.995, "dfr", study.ALL_PARAMETERS, "agre")
    assert "2 of 3 seeds; 1 on other teachers)" in text and "Seed 2 ran on other teachers" in text


def test_aekd_min_norm_rows_keep_their_own_row_beside_the_authors_defaults():
    rows = [_row(study.AEKD_MIN_NORM, seed, 0.47, 0.40 + seed / 100, bias=0.99, teachers="erm") for seed in (0, 1)]
    rows += [_row("aekd", 0, 0.72, 0.70)]
    lines = {line.split(" | ")[0] + " | " + line.split(" | ")[1]: line.split(" | ")[2:]
             for line in study._table_lines(study._paper_rows(rows))}
    min_norm, authors = study.METHOD_ROW[study.AEKD_MIN_NORM].label, study.METHOD_ROW["aekd"].label
    assert "min-norm" in min_norm and "C = 1" in min_norm and "authors' defaults" in authors
    assert not any(key.startswith("| AE-KD |") for key in lines)  # no row mixing the two
    # min-norm, ERM, 99 %: its own two seeds, with the paper's AE-KD beside
    assert lines[f"| {min_norm} | ERM"][1].startswith("47.0 / 40.5 ± 0.7, 2 of 3 seeds (paper 55.0 / 50.0;")
    assert lines[f"| {authors} | ERM"][1] == "–"  # the min-norm rows never stand in for the authors' defaults
    assert lines[f"| {authors} | DFR"][0].startswith("72.0 / 70.0, 1 of 3 seeds (paper 58.8 / 54.5; WGA +15.5)")
    assert lines[f"| {min_norm} | DFR"][0] == "– (paper 58.8 / 54.5)"


def test_findings_name_the_ae_kd_rows_they_read():
    short = study.METHOD_ROW[study.AEKD_MIN_NORM].short
    gaps = {("AVER", "erm"): [1.0, None, None, None], (short, "erm"): [None, -12.0, 2.0, None],
            (study.METHOD_ROW["aekd"].short, "erm"): [None] * 4}
    line = study._erm_gap_line(gaps)
    assert f"our AVER and {short} rows" in line and f"{short} at 99 % (-12.0)" in line
    assert study.METHOD_ROW["aekd"].short not in line  # no authors'-default row has run
