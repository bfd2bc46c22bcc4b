"""Every pair of teacher objective, aggregator, student objective and student DFR runs from overrides alone, for
one tiny round through the in-process grid (no Ray). The cases are a pairwise covering of the registries' product
(every teacher x aggregator, and every other pair of the four axes, at least once); FEDKD_FULL_PRODUCT=1 runs the
whole product instead."""

from __future__ import annotations

import itertools
import os

import pytest

from clients.app import app as client_app
from fedkd.aggregators import AGGREGATORS
from fedkd.distill import STUDENT_OBJECTIVES
from fedkd.results import read_metrics
from fedkd.teachers import TEACHER_OBJECTIVES
from fedkd.validation import load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid

TINY = ["federation.num_clients=2", "federation.num_rounds=1", "teacher.epochs=1", "student.epochs=1",
        "baselines.ensemble=false"]
AXES = (sorted(TEACHER_OBJECTIVES), sorted(AGGREGATORS), sorted(STUDENT_OBJECTIVES), [False, True])


def _pairs(case: tuple) -> set[tuple]:
    return {(i, case[i], j, case[j]) for i, j in itertools.combinations(range(len(case)), 2)}


def pairwise_cases(axes: tuple[list, ...]) -> list[tuple]:
    """Every value pair of the first two axes once, the other axes chosen greedily to cover the most pairs not yet
    covered; then one case per pair still missing."""
    wanted = set().union(*(_pairs(case) for case in itertools.product(*axes)))
    cases, covered = [], set()
    for first, second in itertools.product(axes[0], axes[1]):
        best = max(itertools.product(*axes[2:]), key=lambda rest: len(_pairs((first, second, *rest)) - covered))
        cases.append((first, second, *best))
        covered |= _pairs(cases[-1])
    for i, a, j, b in sorted(wanted - covered, key=str):
        if (i, a, j, b) in covered:
            continue
        case = tuple(a if k == i else b if k == j else axis[0] for k, axis in enumerate(axes))
        cases.append(case)
        covered |= _pairs(case)
    return cases


CASES = list(itertools.product(*AXES)) if os.environ.get("FEDKD_FULL_PRODUCT") == "1" else pairwise_cases(AXES)


def test_the_cases_cover_every_pair_of_the_registries():
    wanted = set().union(*(_pairs(case) for case in itertools.product(*AXES)))
    assert set().union(*(_pairs(case) for case in CASES)) == wanted
    assert {(c[0], c[1]) for c in CASES} == set(itertools.product(AXES[0], AXES[1]))


@pytest.mark.parametrize(
    ("teacher", "aggregator", "student", "student_dfr"), CASES)
def test_combination_runs_one_round(tmp_path, teacher, aggregator, student, student_dfr):
    extra = ["teacher.dfr_steps=5", "teacher.dfr_subsets=1"] if teacher == "dfr" else []
    cfg = load_run_config([f"teacher={teacher}", f"aggregator={aggregator}", f"student={student}", *TINY, *extra,
                           f"student.dfr={student_dfr}", "student.dfr_steps=5", f"runs_dir={tmp_path}"])
    summary = run_federation(InProcessGrid(client_app, 2), cfg)
    (record,) = read_metrics(summary["run_dir"])
    assert 0.0 <= record["test"]["worst_group_accuracy"] <= record["test"]["accuracy"] <= 1.0
    assert record["distill_loss"] == record["distill_loss"]  # not NaN
    assert record["student_model"] in (("dfr", "distilled") if student_dfr else ("distilled",))
    if aggregator in ("agre", "reliability"):
        weights = record["aggregator_stats"]["mean_weight_per_teacher"]
        assert len(weights) == 2 and abs(sum(weights) - 1.0) < 1e-6
