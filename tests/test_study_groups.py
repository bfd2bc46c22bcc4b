"""The per-group view of a study: each test group's accuracy under a method minus under the reference, paired by
seed, computed by hand."""

from types import SimpleNamespace

import pytest

from fedkd.study import parse_study
from fedkd.study_groups import group_accuracies, group_change, group_change_lines
from fedkd.study_runs import MethodGroup, StudyRun


def job(overrides, seed, per_group, aligned=None, conflicting=None):
    test = {"per_group_accuracy": per_group, "bias_aligned_accuracy": aligned, "bias_conflicting_accuracy": conflicting}
    return StudyRun(SimpleNamespace(summary={"test": test}), overrides, seed, {}, {}, {})


def test_each_group_is_paired_by_seed_and_colored_mnist_is_read_as_aligned_against_conflicting():
    study = parse_study({"name": "s", "method": ["privacy"], "reference": {"privacy": "none"}})
    none, dp = {"privacy": "none", "data": "lt"}, {"privacy": "dpsgd", "data": "lt"}
    reference = MethodGroup("none", none, [job(none, 0, {"class0": 0.9, "class1": 0.5}),
                                           job(none, 1, {"class0": 0.8, "class1": 0.7}),
                                           job(none, 2, {"class0": 0.1, "class1": 0.1})])
    private = MethodGroup("dp", dp, [job(dp, 0, {"class0": 0.85, "class1": 0.1}),
                                     job(dp, 1, {"class0": 0.8, "class1": 0.3})])  # seed 2 did not run
    seeds, change = group_change(private, reference)
    assert seeds == [0, 1]  # only the seeds both ran: seed 2's reference would shift every mean
    assert change == pytest.approx({"class0": (-0.05 + 0.0) / 2, "class1": (-0.4 - 0.4) / 2})
    cm_none, cm_dp = {"privacy": "none", "data": "cm"}, {"privacy": "dpsgd", "data": "cm"}
    colored = job(cm_dp, 0, {"digit0-aligned": 1.0, "digit0-conflicting": 0.0}, aligned=0.75, conflicting=0.25)
    assert group_accuracies(colored) == {"aligned": 0.75, "conflicting": 0.25}  # not the 20 digit groups
    groups = [reference, private, MethodGroup("cm none", cm_none, [job(cm_none, 0, {}, 0.5, 0.5)]),
              MethodGroup("cm dp", cm_dp, [colored])]
    lines = group_change_lines(study, groups)
    assert "| `dp` | 2 | -0.025 | -0.400 |" in lines and "| `cm dp` | 1 | +0.250 | -0.250 |" in lines
    assert "| group | seeds | class0 | class1 |" in lines and "| group | seeds | aligned | conflicting |" in lines
    assert group_change_lines(study, [reference]) == []  # nothing paired: no section
