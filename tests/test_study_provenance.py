"""bench/studies.py: every row a study appends carries its provenance (commit, command, date, machine). The
study's cell is replaced by a stand-in, so nothing is trained."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import studies  # noqa: E402


def test_each_new_row_carries_commit_command_date_and_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(studies.ROOT / "bench" / "label_skew_study.py"), "--threads", "1"])
    rows = tmp_path / "study.jsonl"
    args = argparse.Namespace(threads=0, reverse=False, seeds=None, max_cells=0, match="")
    studies.run_missing("study", rows, ["a", "b"], (0,),
                        lambda cell, seed, cache: {"cell": cell, "seed": seed, "accuracy": 0.5,
                                                   "worst_group_accuracy": 0.25, "seconds": 1.0},
                        lambda: None, args)
    written = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [(r["cell"], r["seed"]) for r in written] == [("a", 0), ("b", 0)]
    for row in written:
        p = row["provenance"]
        assert p["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", p["commit"])
        assert p["uncommitted_code_changes"] in (True, False, None)
        assert p["command"] == "python bench/label_skew_study.py --threads 1"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", p["date"])
        assert {"hostname", "cpu", "cores", "torch_threads", "platform", "python", "torch", "flwr"} <= set(p["machine"])
