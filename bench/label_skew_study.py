"""Teacher weighting under federated label skew: every aggregator on identical teachers, Colored MNIST at 99 %
and 95 % and MNIST-LT, Dirichlet label skew α ∈ {1.0, 0.3, 0.1} and IID; through the in-process grid.

    .venv/bin/python bench/label_skew_study.py                 # every missing cell, then docs/results.md
    .venv/bin/python bench/label_skew_study.py --match "cmnist 0.99 | 0.3"   # the cells of one setting first
    .venv/bin/python bench/label_skew_study.py --report-only   # only rebuild the report

Setting: the federated counterpart of the Table 1 study (full MNIST, 10 clients on disjoint shards, a held-out
transfer pool of 10 %, cnn_wide DFR teachers refitted on the server's public labeled split, the `cnn` student,
2 rounds). Cells that differ only in the aggregator share their trained teachers and answers
(TrainedTeacherCache); each row names its teachers by ``teacher_cache_key``. Cells are ordered so that the
setting of the acceptance test (Colored MNIST 99 %, α = 0.3, with its IID reference) runs first.
"""

from __future__ import annotations

import hashlib

import numpy as np
from studies import ROOT, mean_std, read_rows, run_cell, study_main, write_section  # noqa: E402

from fedkd.validation import load_run_config
from server.inprocess import TrainedTeacherCache

RESULTS = ROOT / "docs" / "label_skew_study.jsonl"
NAME = "label-skew study"
SEEDS = (0, 1, 2)
BASE = ["dataset.source=mnist", "dataset.test_per_class=1000", "dataset.val_per_class=500",
        "dataset.transfer_fraction=0.1", "teacher=dfr", "teacher.arch=cnn_wide", "teacher.epochs=2",
        "teacher.weight_decay=0.0001", "student.epochs=6", "student.weight_decay=0.0001", "federation.num_rounds=2",
        "runs_dir=runs/label_skew_study"]
DATASETS = {"cmnist 0.99": ["dataset=cmnist", "dataset.bias_ratio=0.99"],
            "cmnist 0.95": ["dataset=cmnist", "dataset.bias_ratio=0.95"],
            "mnist_lt 10": ["dataset=mnist_lt", "dataset.imbalance=10"]}
ALPHAS = (0.3, None, 1.0, 0.1)  # None: IID
METHODS = ("mean", "support", "agre", "agre_fed", "aekd", "random")


def _partition(alpha: float | None) -> list[str]:
    if alpha is None:
        return ["partition=iid"]
    return ["partition=dirichlet", "partition.by=label", f"partition.alpha={alpha:g}"]


def _cells() -> dict[str, list[str]]:
    cells = {}
    for dataset, data in DATASETS.items():
        for alpha in ALPHAS:
            for method in METHODS:
                name = f"{dataset} | {'iid' if alpha is None else f'{alpha:g}'} | {method}"
                cells[name] = [*BASE, *data, *_partition(alpha), f"aggregator={method}"]
    return cells


CELLS = _cells()


def teacher_cache_key(overrides: list[str]) -> str:
    """What the teachers of a run depend on (the clients' job), hashed: equal keys, identical teachers."""
    return hashlib.sha256(repr(load_run_config(overrides).client_job().training_key()).encode()).hexdigest()[:16]


def make_row(cell: str, seed: int, cache: TrainedTeacherCache) -> dict:
    dataset, alpha, method = cell.split(" | ")
    overrides = [*CELLS[cell], f"seed={seed}"]
    summary, records, seconds, reused = run_cell(overrides, cache)
    test = summary["test"]
    cmnist = dataset.startswith("cmnist")
    members = summary["baselines"].get("ensemble", {}).get("members", [])
    return {
        "cell": cell, "seed": seed, "dataset": dataset.split()[0],
        "bias_ratio": float(dataset.split()[1]) if cmnist else None,
        "imbalance": None if cmnist else float(dataset.split()[1]),
        "alpha": None if alpha == "iid" else float(alpha), "method": method, "overrides": overrides,
        "accuracy": test["accuracy"],
        "worst_group_accuracy": test["two_group_worst_group_accuracy"] if cmnist else test["worst_group_accuracy"],
        "worst_group_accuracy_all_groups": test["worst_group_accuracy"],
        "teachers_mean_accuracy": float(np.mean([m["accuracy"] for m in members])) if members else None,
        "aggregator_stats": {k: v for k, v in records[-1]["aggregator_stats"].items()
                             if k in ("biased_client", "mean_weight_per_teacher")},
        "teacher_cache_key": teacher_cache_key(overrides), "teachers_reused": reused,
        "run_dir": summary["run_dir"], "seconds": seconds,
    }


def report() -> None:
    rows = read_rows(RESULTS)
    hours = sum(r["seconds"] for r in rows) / 3600
    lines = ["## Teacher weighting under label skew", "",
             "Command (resumable): `mkdir -p runs; nohup .venv/bin/python bench/label_skew_study.py > "
             f"runs/label_skew_study.log 2>&1 &`. Raw rows: `docs/label_skew_study.jsonl`. {len(rows)} runs in "
             f"{hours:.2f} h (in-process grid, CPU). Setting: bench/label_skew_study.py's docstring; overrides in "
             "each row. Cells: accuracy / WGA (two-group for Colored MNIST, per class for MNIST-LT), mean ± std "
             "over the seeds run (n). Not every cell has run yet: '–'.", "",
             "| dataset | partition | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for dataset in DATASETS:
        for alpha in ALPHAS:
            part = "iid" if alpha is None else f"{alpha:g}"
            cells = []
            for method in METHODS:
                got = [r for r in rows if r["cell"] == f"{dataset} | {part} | {method}"]
                cells.append("–" if not got else f"{mean_std([r['accuracy'] for r in got])} / "
                             f"{mean_std([r['worst_group_accuracy'] for r in got])} (n={len(got)})")
            if any(c != "–" for c in cells):
                lines.append(f"| {dataset} | {'IID' if alpha is None else f'Dirichlet {part}'} | "
                             + " | ".join(cells) + " |")
    write_section("label-skew-study", lines)


if __name__ == "__main__":
    study_main(__doc__, NAME, RESULTS, list(CELLS), SEEDS, make_row, report)
