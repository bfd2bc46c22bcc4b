"""Seed-method study: one factor at a time around a base setting, 3 seeds, on offline full-MNIST
Colored MNIST and MNIST-LT, through the in-process grid (the same round loop as Flower's engines, without Ray).

    .venv/bin/python bench/seed_study.py                 # run every missing cell, then write docs/results.md
    .venv/bin/python bench/seed_study.py --threads 1 [--reverse]   # two workers sharing the cells
    .venv/bin/python bench/seed_study.py --report-only   # only rebuild docs/results.md from what is done

Each finished (cell, seed) is appended to docs/seed_study.jsonl at once; a rerun skips what is there, so the
study can be stopped and resumed. The report (its own section of docs/results.md) states design and cost.
"""

from __future__ import annotations

import re

import numpy as np
from studies import MEAN_STD_NOTE, ROOT, format_mean_std, read_rows, run_cell, study_main, write_section

from fedkd.results import read_metrics
from server.inprocess import TrainedTeacherCache

RESULTS = ROOT / "docs" / "seed_study.jsonl"
SEEDS = (0, 1, 2)
NAME = "seed study"

# The base: full-MNIST Colored MNIST at bias 0.98, 10 IID clients (about 6200 images each), 2 rounds of 4 local
# epochs (teacher lr 0.02) and 6 distillation epochs per round on a 6880-image transfer pool, 500 test images per
# class. Calibrated without the test split, seed 0: one ERM client's teacher reaches 0.64 accuracy / 0.43 WGA
# after 8 epochs at lr 0.02 (0.61 / 0.31 at lr 0.05; at bias 0.99 only 0.42 / 0.21), so 0.98 is where teachers
# learn digits and are still biased; the bias factor moves around it. Student: with 3 epochs per round the
# distillation loss ended at 0.056 and val accuracy at 0.585; with 6 at 0.032 (0.0325 -> 0.0319 over the two
# rounds, a plateau) and 0.610; lr 0.03 instead of 0.01 diverged (loss 0.53, val accuracy 0.42).
BASE = ["aggregator=mean", "dataset.source=mnist", "dataset.bias_ratio=0.98", "dataset.transfer_fraction=0.1",
        "dataset.test_per_class=500", "federation.num_clients=10", "federation.num_rounds=2", "teacher.epochs=4",
        "teacher.lr=0.02", "student.epochs=6", "runs_dir=runs/seed_study"]
AGRE_FED = ["aggregator=agre", "aggregator.biased=mean_bases", "aggregator.prior_correction=true"]
DIRICHLET = ["partition=dirichlet", "partition.alpha=0.5"]
LT = ["dataset=mnist_lt", "dataset.source=mnist"]

# Cells sharing a teacher setting (dataset, partition, teacher objective) are adjacent: their clients train
# identically, so the TrainedTeacherCache trains those teachers once per seed.
REFERENCE_CELL = "base: erm / mean / kd (+ references)"
CELLS: dict[str, list[str]] = {
    "base: erm / mean / kd (+ references)": ["baselines.one_hot=true"],
    "aggregator=support": ["aggregator=support"],
    "aggregator=agre": ["aggregator=agre"],
    "aggregator=agre, federated-aware": AGRE_FED,
    "aggregator=agre x support": ["aggregator=agre", "aggregator.with_support=true"],
    "student=robust_kd": ["student=robust_kd"],
    "student DFR": ["student.dfr=true"],
    "agre + robust_kd + student DFR": ["aggregator=agre", "student=robust_kd", "student.dfr=true"],
    "teacher=dfr": ["teacher=dfr", "teacher.dfr_data=local"],
    "teacher=dfr, agre": ["teacher=dfr", "teacher.dfr_data=local", "aggregator=agre"],
    "dirichlet 0.5": DIRICHLET,
    "dirichlet 0.5, support": [*DIRICHLET, "aggregator=support"],
    "dirichlet 0.5, agre": [*DIRICHLET, "aggregator=agre"],
    "dirichlet 0.5, agre federated-aware": [*DIRICHLET, *AGRE_FED],
    "bias 0.995": ["dataset.bias_ratio=0.995"],
    "bias 0.995, agre": ["dataset.bias_ratio=0.995", "aggregator=agre"],
    "bias 0.99": ["dataset.bias_ratio=0.99"],
    "bias 0.99, agre": ["dataset.bias_ratio=0.99", "aggregator=agre"],
    "bias 0.95": ["dataset.bias_ratio=0.95"],
    "bias 0.95, agre": ["dataset.bias_ratio=0.95", "aggregator=agre"],
    "mnist_lt 10": [*LT, "dataset.imbalance=10"],
    "mnist_lt 10, robust_kd": [*LT, "dataset.imbalance=10", "student=robust_kd"],
    "mnist_lt 10, agre": [*LT, "dataset.imbalance=10", "aggregator=agre"],
    "mnist_lt 50": [*LT, "dataset.imbalance=50"],
    "mnist_lt 50, robust_kd": [*LT, "dataset.imbalance=50", "student=robust_kd"],
    "mnist_lt 50, agre": [*LT, "dataset.imbalance=50", "aggregator=agre"],
}


def overrides(cell: str, seed: int) -> list[str]:
    extra = CELLS[cell]
    # later overrides win in Hydra; the bias of the base is dropped for the long-tailed set, which has none
    other_dataset = any(e.startswith("dataset=") for e in extra)
    base = [o for o in BASE if not (other_dataset and o.startswith("dataset.bias_ratio"))]
    # the centralized references train on all 62k pooled images (about 5 min each): seed 0 only, to fit the budget
    references = ["baselines.centralized=true"] if cell == REFERENCE_CELL and seed == 0 else []
    return [*base, *extra, *references, f"seed={seed}"]


def make_row(cell: str, seed: int, cache: TrainedTeacherCache) -> dict:
    summary, records, seconds, reused = run_cell(overrides(cell, seed), cache)
    test, last = summary["test"], records[-1]
    weights = last["aggregator_stats"].get("mean_weight_per_teacher")
    teachers = [{"partition_id": t["partition_id"], "num_examples": t["num_examples"],
                 "accuracy": t["test_accuracy"], "worst_group_accuracy": t["test_worst_group_accuracy"],
                 "agre_weight": None if weights is None else weights[i]}
                for i, t in enumerate(sorted(last["teachers"], key=lambda t: t["partition_id"]))]
    return {
        "cell": cell, "seed": seed, "overrides": overrides(cell, seed), "accuracy": test["accuracy"],
        "worst_group_accuracy": test["worst_group_accuracy"], "worst_class_accuracy": test["worst_class_accuracy"],
        "teacher_mean_accuracy": summary["teachers"]["mean_accuracy"],
        "teacher_mean_worst_group_accuracy": summary["teachers"]["mean_worst_group_accuracy"],
        "baselines": {k: {"accuracy": v["accuracy"], "worst_group_accuracy": v["worst_group_accuracy"],
                          "non_federated": v.get("non_federated", False)} for k, v in summary["baselines"].items()},
        "teachers": teachers, "biased_client": last["aggregator_stats"].get("biased_client"),
        "teachers_reused": reused, "run_dir": summary["run_dir"], "seconds": seconds,
    }


# Paired comparisons: the two cells share teachers (same seed, same client training), so the per-seed difference
# isolates the server-side method.
PAIRS: list[tuple[str, str, str]] = [
    ("base: erm / mean / kd (+ references)", "aggregator=support", "worst_group_accuracy"),
    ("base: erm / mean / kd (+ references)", "aggregator=agre", "worst_group_accuracy"),
    ("base: erm / mean / kd (+ references)", "aggregator=agre, federated-aware", "worst_group_accuracy"),
    ("base: erm / mean / kd (+ references)", "aggregator=agre, federated-aware", "accuracy"),
    ("base: erm / mean / kd (+ references)", "aggregator=agre x support", "worst_group_accuracy"),
    ("teacher=dfr", "teacher=dfr, agre", "worst_group_accuracy"),
    ("dirichlet 0.5", "dirichlet 0.5, support", "worst_group_accuracy"),
    ("dirichlet 0.5", "dirichlet 0.5, agre", "worst_group_accuracy"),
    ("dirichlet 0.5", "dirichlet 0.5, agre federated-aware", "worst_group_accuracy"),
    ("bias 0.995", "bias 0.995, agre", "worst_group_accuracy"),
    ("bias 0.99", "bias 0.99, agre", "worst_group_accuracy"),
    ("bias 0.95", "bias 0.95, agre", "worst_group_accuracy"),
    ("mnist_lt 10", "mnist_lt 10, agre", "worst_group_accuracy"),
    ("mnist_lt 50", "mnist_lt 50, agre", "worst_group_accuracy"),
    ("base: erm / mean / kd (+ references)", "student=robust_kd", "worst_class_accuracy"),
    ("mnist_lt 10", "mnist_lt 10, robust_kd", "worst_class_accuracy"),
    ("mnist_lt 50", "mnist_lt 50, robust_kd", "worst_class_accuracy"),
    ("base: erm / mean / kd (+ references)", "student DFR", "worst_group_accuracy"),
]


def _class_share_correlation(row: dict) -> float | None:
    """Pearson correlation, over (teacher m, transfer group g), between AGRE's mean weight of m on g's points and
    m's share of g's class among all clients' training images (n_mc / Σ_m' n_m'c); read from the run's
    metrics.jsonl (None when the run directory is gone or the shares are all equal)."""
    path = ROOT / row["run_dir"] / "metrics.jsonl"
    if not path.exists():
        return None
    last = read_metrics(path.parent)[-1]
    counts = np.array([t["class_counts"] for t in sorted(last["teachers"], key=lambda t: t["partition_id"])], float)
    share = counts / counts.sum(0).clip(min=1.0)
    weights, shares = [], []
    for name, w in last["aggregator_stats"]["mean_weight_per_group_and_teacher"].items():
        c = int(re.match(r"(?:digit|class)(\d+)", name).group(1))
        weights += w
        shares += share[:, c].tolist()
    return float(np.corrcoef(weights, shares)[0, 1]) if np.std(shares) > 0 else None


def _agre_weights(got: list[dict]) -> str:
    """How AGRE spread its weight: the biased client's own teacher, the range, and the correlation of a teacher's
    weight with its test accuracy, its shard size and its share of the point's class (per seed, then averaged)."""
    own, spread, with_acc, with_size = [], [], [], []
    for r in got:
        w = np.array([t["agre_weight"] for t in r["teachers"]])
        acc = np.array([t["accuracy"] for t in r["teachers"]])
        size = np.array([t["num_examples"] for t in r["teachers"]])
        if r["biased_client"] is not None and r["biased_client"] >= 0:
            own.append(w[r["biased_client"]])
        spread.append(f"{w.min():.2f}–{w.max():.2f}")
        with_acc.append(np.corrcoef(w, acc)[0, 1])
        if size.std() > 0:
            with_size.append(np.corrcoef(w, size)[0, 1])
    with_share = [c for c in map(_class_share_correlation, got) if c is not None]
    return (f"{format_mean_std(own) if own else 'mean of bases'} | {', '.join(spread)} | "
            f"{format_mean_std(with_acc)} | {format_mean_std(with_size) if with_size else 'equal shards'} | "
            f"{format_mean_std(with_share)} |")


def _teacher_key(row: dict) -> tuple:
    return tuple((t["accuracy"], t["worst_group_accuracy"]) for t in row["teachers"])


def report() -> None:
    rows = read_rows(RESULTS)
    by_cell = {cell: [r for r in rows if r["cell"] == cell] for cell in CELLS}
    hours = sum(r["seconds"] for r in rows) / 3600
    lines = [
        "## Seed-method study", "",
        "Commands (resumable; finished cells are skipped), two workers sharing the cells on 2 cores: "
        "`mkdir -p runs; nohup .venv/bin/python bench/seed_study.py --threads 1 > runs/seed_study.log 2>&1 &` and "
        "`nohup .venv/bin/python bench/seed_study.py --threads 1 --reverse > runs/seed_study.2.log 2>&1 &`, then "
        "`.venv/bin/python bench/seed_study.py --report-only`. "
        "Raw rows: `docs/seed_study.jsonl` (each row's `provenance`: commit, command, date, machine; rows without "
        "one: `docs/seed_study.provenance.json`).", "",
        f"Design: one factor at a time around a base, {len(CELLS)} cells × {len(SEEDS)} seeds, in-process grid on "
        f"CPU (2 cores); {len(rows)} runs done in {hours:.2f} h of wall time. Cells that share a teacher setting "
        "reuse the same trained teachers per seed (`TrainedTeacherCache`; a test checks that this changes no "
        "number), so the paired differences below compare server-side methods on identical teachers. Two worker "
        "processes with one torch thread each ran the cells; seed 0's first four cells (base, support, agre, agre "
        "federated-aware) ran earlier in one process with two threads, which changes float summation order and "
        "so the trained teachers slightly (they are not paired with the one-thread cells). "
        f"Base overrides: `{' '.join(BASE)}`. Nothing was tuned on the test split: the base budget was set from "
        "teacher calibration on one client, and every method runs with its config defaults.", "",
        "Accuracy, worst-group accuracy (WGA) and worst-class accuracy of the student on the test split (Colored "
        "MNIST: 20 groups digit × aligned/conflicting colour; MNIST-LT: groups are classes), "
        f"{MEAN_STD_NOTE}. Teachers: the clients' own test accuracy / WGA, averaged; ensemble: their mean "
        "probability evaluated directly.", "",
        "| cell | overrides | n | accuracy | WGA | worst-class | teachers acc / WGA | ensemble acc / WGA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell, got in by_cell.items():
        extra = " ".join(CELLS[cell]) or "(base)"

        def ms(key: str, got: list = got) -> str:
            return format_mean_std([r[key] for r in got])

        def ens(key: str, got: list = got) -> str:
            return format_mean_std([r["baselines"]["ensemble"][key] for r in got if "ensemble" in r["baselines"]])

        lines.append(f"| {cell} | `{extra}` | {len(got)} | {ms('accuracy')} | {ms('worst_group_accuracy')} | "
                     f"{ms('worst_class_accuracy')} | {ms('teacher_mean_accuracy')} / "
                     f"{ms('teacher_mean_worst_group_accuracy')} | {ens('accuracy')} / {ens('worst_group_accuracy')} |")
    lines += ["", "Paired differences (method − reference), over the seeds where both cells distilled from identical "
              "teachers (equal teacher metrics; a pair whose teachers differ, e.g. trained under another torch "
              "thread count, is left out and counted):", "",
              "| reference | method | metric | difference | per seed | unpaired seeds |", "|---|---|---|---|---|---|"]
    for ref, cell, key in PAIRS:
        diffs, unpaired = [], []
        for a in by_cell[ref]:
            b = next((r for r in by_cell[cell] if r["seed"] == a["seed"]), None)
            if b is None:
                continue
            if _teacher_key(a) == _teacher_key(b):
                diffs.append(b[key] - a[key])
            else:
                unpaired.append(str(a["seed"]))
        lines.append(f"| {ref} | {cell} | {key} | {format_mean_std(diffs)} | "
                     f"{', '.join(f'{d:+.3f}' for d in diffs)} | {', '.join(unpaired) or '–'} |")
    refs = by_cell[REFERENCE_CELL]
    names = list(dict.fromkeys(name for r in refs for name in r["baselines"]))
    if names:
        lines += ["", "References of the base setting (NON-FEDERATED ones marked; centralized on seed 0 only):",
                  "", "| reference | n | accuracy | WGA |", "|---|---|---|---|"]
        for name in names:
            got = [r["baselines"][name] for r in refs if name in r["baselines"]]
            mark = " (NON-FEDERATED)" if got[0]["non_federated"] else ""
            lines.append(f"| {name}{mark} | {len(got)} | {format_mean_std([g['accuracy'] for g in got])} | "
                         f"{format_mean_std([g['worst_group_accuracy'] for g in got])} |")
    lines += ["", "Where AGRE puts its weight (last round; at each point the weights sum to 1 over the 10 teachers, "
              "uniform = 0.1): weight of the biased client's own teacher, range of the teachers' mean weights per "
              "seed, and correlations of a teacher's weight with its test accuracy, its shard size, and (over "
              "teacher × transfer group) its share of the group's class in the clients' data "
              f"({MEAN_STD_NOTE}). The class-share correlation reads each run's metrics.jsonl: '–' where the run "
              "directories (`runs/seed_study/`, not kept in the repository) are absent.", "",
              "| cell | biased client's own weight | weight range per seed | corr(weight, accuracy) | "
              "corr(weight, shard size) | corr(weight, class share) |", "|---|---|---|---|---|---|"]
    for cell, got in by_cell.items():
        got = [r for r in got if r["teachers"][0]["agre_weight"] is not None]
        if got:
            lines.append(f"| {cell} | {_agre_weights(got)}")
    write_section("seed_study", lines)


def main() -> None:
    study_main(__doc__, NAME, RESULTS, list(CELLS), SEEDS, make_row, report)

if __name__ == "__main__":
    main()
