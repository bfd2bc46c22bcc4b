"""Every teacher objective x aggregator x student objective runs from overrides alone, for one tiny round
through the in-process grid (no Ray)."""

from __future__ import annotations

import itertools

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


@pytest.mark.parametrize(
    ("teacher", "aggregator", "student", "student_dfr"),
    list(itertools.product(sorted(TEACHER_OBJECTIVES), sorted(AGGREGATORS), sorted(STUDENT_OBJECTIVES),
                           [False, True])),
)
def test_combination_runs_one_round(tmp_path, teacher, aggregator, student, student_dfr):
    extra = ["teacher.dfr_steps=5", "teacher.dfr_subsets=1"] if teacher == "dfr" else []
    cfg = load_run_config([f"teacher={teacher}", f"aggregator={aggregator}", f"student={student}", *TINY, *extra,
                           f"student.dfr={student_dfr}", "student.dfr_steps=5", f"runs_dir={tmp_path}"])
    summary = run_federation(InProcessGrid(client_app, 2), cfg)
    (record,) = read_metrics(summary["run_dir"])
    assert 0.0 <= record["test"]["worst_group_accuracy"] <= record["test"]["accuracy"] <= 1.0
    assert record["distill_loss"] == record["distill_loss"]  # not NaN
    assert record["student_model"] in (("dfr", "distilled") if student_dfr else ("distilled",))
    if aggregator == "agre":
        weights = record["aggregator_stats"]["mean_weight_per_teacher"]
        assert len(weights) == 2 and abs(sum(weights) - 1.0) < 1e-6
