"""The study reports' ± is `fedkd report`'s: one function (fedkd.run_groups.mean_std), the sample standard
deviation (ddof=1), and no ± for a single value. Numbers are written by hand, nothing is trained."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import studies  # noqa: E402

from fedkd import run_groups  # noqa: E402
from fedkd.report import format_cell  # noqa: E402


def test_the_studies_use_the_run_groups_mean_std():
    assert studies.mean_std is run_groups.mean_std


def test_sample_std_not_population_std():
    mean, std = run_groups.mean_std([0.1, 0.3])
    assert mean == pytest.approx(0.2) and std == pytest.approx(math.sqrt(0.02))  # population std: 0.1
    assert studies.format_mean_std([0.1, 0.3]) == "0.200 ± 0.141"
    assert format_cell([0.1, 0.3], ".3f") == "0.200 ± 0.141"  # fedkd report's cell, the same numbers


def test_one_value_has_no_spread_and_none_is_a_dash():
    assert studies.format_mean_std([0.25]) == "0.250"
    assert studies.format_mean_std([]) == "–"
    assert studies.format_mean_std([1.0, 2.0, 3.0], ".1f") == "2.0 ± 1.0"
