"""AGRE-KD's Table 1 (Kenfack et al., Colored MNIST at 99.5 / 99 / 98 / 95 % bias-aligned) side by side with the
paper, then the same layout on federated shards; through the in-process grid (the round loop of Flower's engines,
without Ray).

    .venv/bin/python bench/table1_study.py                    # every missing cell, then docs/results.md
    .venv/bin/python bench/table1_study.py --threads 1 [--reverse]   # two workers sharing the cells
    .venv/bin/python bench/table1_study.py --report-only      # only rebuild the report from the finished rows

The paper's setting is the preset ``experiment=agre_table1`` (conf/experiment/agre_table1.yaml). Every finished
(cell, seed) is appended to docs/table1_study.jsonl at once; a rerun skips it. Cells whose clients train
identically are adjacent, so that a seed's teachers are trained once and shared by every method
(``TrainedTeacherCache``, which also reuses their answers).
"""

from __future__ import annotations

from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from studies import MEAN_STD_NOTE, ROOT, read_rows, run_cell, study_main, write_section  # noqa: E402

from fedkd.aggregators.aekd import AekdConfig  # noqa: E402
from fedkd.run_groups import mean_std  # noqa: E402
from server.inprocess import TrainedTeacherCache  # noqa: E402

RESULTS = ROOT / "docs" / "table1_study.jsonl"
PLOT = ROOT / "docs" / "table1_study.png"
SEEDS = (0, 1, 2)
NAME = "table 1 study"
BIASES = (0.995, 0.99, 0.98, 0.95)
METHODS = {"mean": "AVER", "random": "Random", "aekd": "AE-KD", "agre": "AGRE-KD"}
TEACHERS = {"erm": ["teacher=erm"], "dfr": ["teacher=dfr"]}
# AGRE-KD as the paper computes it, per-example gradients over all the student's parameters (torch.func), beside the
# preset's closed form on the last layer; 19x its cost per step (docs/performance.md), so at 99.5 % with DFR only
ALL_PARAMETERS = "agre_all"
ALL_PARAMETER_CELLS = {
    (0.995, "dfr"): ["aggregator=agre", "aggregator.gradient=per_sample", "aggregator.param_set=all"]}
# AE-KD's rows before its default became the authors' (tolerance C = 0.6, gradients of the batch-mean loss): the
# min-norm point with C = 1 (aggregator.tolerance=1 aggregator.gradient_scale=exact today), relabelled so
AEKD_MIN_NORM = "aekd_minnorm"

# The paper's Table 1 (average / WGA, %), read from its PDF (docs/AGRE-KD.pdf of dat-tran05/robust-ensemble-kd);
# keys: (row, teachers), values per bias ratio in BIASES order.
PAPER: dict[tuple[str, str], tuple[tuple[float, float], ...]] = {
    ("Teacher", "erm"): ((37.4, 30.5), (55.3, 50.4), (71.7, 68.7), (87.7, 86.3)),
    ("Teacher", "dfr"): ((58.4, 54.7), (66.0, 63.1), (80.3, 78.1), (83.4, 81.7)),
    ("Deep Ens.", "erm"): ((36.2, 29.2), (56.2, 51.4), (74.4, 71.5), (89.6, 88.4)),
    ("Deep Ens.", "dfr"): ((72.8, 69.8), (77.7, 75.3), (84.2, 82.5), (90.0, 88.9)),
    ("One-hot", "erm"): ((26.9, 19.0), (29.3, 21.6), (34.5, 27.4), (47.0, 41.4)),
    ("One-hot", "dfr"): ((53.6, 52.6), (51.9, 51.7), (81.5, 80.0), (61.8, 60.9)),
    ("Random", "erm"): ((25.0, 16.7), (26.5, 18.5), (29.4, 21.7), (41.1, 34.6)),
    ("Random", "dfr"): ((53.2, 48.5), (49.7, 44.5), (39.3, 32.6), (41.8, 35.5)),
    ("AVER", "erm"): ((33.9, 26.5), (51.6, 46.2), (72.2, 69.1), (89.3, 88.1)),
    ("AVER", "dfr"): ((54.1, 49.0), (62.8, 58.7), (86.5, 85.0), (88.5, 87.3)),
    ("AE-KD", "erm"): ((36.2, 29.2), (55.0, 50.0), (73.4, 70.5), (89.7, 88.6)),
    ("AE-KD", "dfr"): ((58.8, 54.5), (69.4, 66.3), (86.6, 85.1), (88.1, 86.9)),
    ("AGRE-KD", "erm"): ((36.3, 29.2), (55.5, 51.5), (74.2, 71.4), (90.2, 89.1)),
    ("AGRE-KD", "dfr"): ((63.9, 59.9), (70.7, 67.5), (87.5, 86.2), (89.0, 88.7)),
}

# A test of why our DFR teachers beat the paper's at 99.5 and 99 %: DFR fitted on as few bias-conflicting images as
# a validation split with the training bias would hold (5 per digit: 45 conflicting, 5 aligned in all).
EXPLAIN_BIASES = (0.995, 0.99)
# A test of why our One-hot and Random rows beat the paper's by 13-58 points: the paper's stated SGD learning rate,
# 1e-3 for teachers and student alike (its Appendix B: "We keep all hyperparameters fixed to train the teacher
# and student models"), instead of the preset's calibrated 0.05 / 0.01.
LR_EXPLAIN_BIASES = (0.99, 0.95)
LR_EXPLAIN = "explain the paper's lr 1e-3"
# How close an ERM-teacher row must be to the paper's WGA to count as reproduced, in points (the findings list the
# rows beyond it)
NEAR_PAPER_POINTS = 9.0


class MethodRow(NamedTuple):
    """A distilled student's row of the paper table."""

    label: str  # as the table prints it
    short: str  # in the plot's legend and in the findings
    method: str  # the rows' ``method``
    paper_row: str  # the paper's row it is compared with (a key of PAPER)
    teachers: tuple[str, ...]  # the teacher kinds it has a row for


# AE-KD and AGRE-KD have two rows of ours each, both beside the paper's one
METHOD_ROWS = (
    MethodRow("AVER", "AVER", "mean", "AVER", tuple(TEACHERS)),
    MethodRow("Random", "Random", "random", "Random", tuple(TEACHERS)),
    MethodRow("AE-KD (min-norm point, C = 1)", "AE-KD min-norm (C = 1)", AEKD_MIN_NORM, "AE-KD", tuple(TEACHERS)),
    MethodRow(f"AE-KD (authors' defaults: C = {AekdConfig.tolerance:g}, their gradient scale)",
              "AE-KD authors' defaults", "aekd", "AE-KD", tuple(TEACHERS)),
    MethodRow("AGRE-KD (head only, closed form)", "AGRE-KD head-only", "agre", "AGRE-KD", tuple(TEACHERS)),
    MethodRow("AGRE-KD, all parameters (the paper's gradient)", "AGRE-KD all-parameter", ALL_PARAMETERS, "AGRE-KD",
              tuple(t for t in TEACHERS if any(kind == t for _, kind in ALL_PARAMETER_CELLS))),
)
METHOD_ROW = {row.method: row for row in METHOD_ROWS}
# Where AE-KD's authors' defaults rerun first: the comparison with the min-norm rows is printed there before any of
# its rows arrive (and at any other cell once it has some)
AEKD_AUTHORS_FIRST_CELLS = ((0.995, "dfr"),)


class TableRow(NamedTuple):
    """A row of the paper table: ours per bias ratio, each (mean, sample std, n) in % or None without runs."""

    label: str
    short: str
    paper_row: str | None
    teachers: str
    average: list[tuple | None]
    wga: list[tuple | None]


# The federated counterpart: full-MNIST Colored MNIST, 10 clients on disjoint shards (IID, or Dirichlet 0.3 over
# labels), a held-out transfer pool, the same teachers (cnn_wide) and student as the preset, 2 rounds.
FEDERATED_BIASES = (0.99, 0.95)
FEDERATED_BASE = ["dataset=cmnist", "dataset.source=mnist", "dataset.test_per_class=1000", "dataset.val_per_class=500",
                  "dataset.transfer_fraction=0.1", "teacher=dfr", "teacher.arch=cnn_wide", "teacher.epochs=2",
                  "teacher.weight_decay=0.0001", "student.epochs=6", "student.weight_decay=0.0001",
                  "federation.num_rounds=2"]
PARTITIONS = {"iid": ["partition=iid"],
              "dirichlet 0.3": ["partition=dirichlet", "partition.by=label", "partition.alpha=0.3"]}
# The earlier federated finding to re-test: a one-hot student trained on the server's labeled split alone.
FEDERATED_ONE_HOT = "federated one-hot reference"
FEDERATED_METHODS = {"mean": ["aggregator=mean"], "agre": ["aggregator=agre"], "agre_fed": ["aggregator=agre_fed"],
                     "support": ["aggregator=support"]}


def _cells() -> dict[str, list[str]]:
    cells = {}
    for bias in BIASES:
        for teachers, teacher_overrides in TEACHERS.items():
            for method in METHODS:
                references = ["baselines.centralized=true"] if teachers == "erm" and method == "mean" else \
                    ["baselines.centralized=false"]
                cells[f"paper | {bias} | {teachers} | {method}"] = [
                    "experiment=agre_table1", f"dataset.bias_ratio={bias}", *teacher_overrides,
                    f"aggregator={method}", *references, "runs_dir=runs/table1_study"]
            if (bias, teachers) in ALL_PARAMETER_CELLS:
                cells[f"paper | {bias} | {teachers} | {ALL_PARAMETERS}"] = [
                    "experiment=agre_table1", f"dataset.bias_ratio={bias}", *teacher_overrides,
                    *ALL_PARAMETER_CELLS[(bias, teachers)], "baselines.centralized=false", "runs_dir=runs/table1_study"]
    for bias in EXPLAIN_BIASES:
        for method in ("mean", "agre"):
            cells[f"explain dfr on 5 labeled images per digit | {bias} | dfr | {method}"] = [
                "experiment=agre_table1", f"dataset.bias_ratio={bias}", "teacher=dfr", "dataset.val_per_class=5",
                f"aggregator={method}", "baselines.centralized=false", "runs_dir=runs/table1_study"]
    for bias in LR_EXPLAIN_BIASES:
        for method in ("mean", "random"):
            references = "true" if method == "mean" else "false"
            cells[f"{LR_EXPLAIN} | {bias} | erm | {method}"] = [
                "experiment=agre_table1", f"dataset.bias_ratio={bias}", "teacher=erm", "teacher.lr=0.001",
                "student.lr=0.001", f"aggregator={method}", f"baselines.centralized={references}",
                "runs_dir=runs/table1_study"]
    for bias in FEDERATED_BIASES:
        for partition, partition_overrides in PARTITIONS.items():
            for dfr_data in ("public", "local"):
                for method, method_overrides in FEDERATED_METHODS.items():
                    cells[f"federated {partition} | {bias} | dfr {dfr_data} | {method}"] = [
                        *FEDERATED_BASE, f"dataset.bias_ratio={bias}", *partition_overrides,
                        f"teacher.dfr_data={dfr_data}", *method_overrides, "runs_dir=runs/table1_study"]
        cells[f"{FEDERATED_ONE_HOT} | {bias} | dfr public | mean"] = [
            *FEDERATED_BASE, f"dataset.bias_ratio={bias}", *PARTITIONS["iid"], "teacher.dfr_data=public",
            "aggregator=mean", "baselines.one_hot=true", "runs_dir=runs/table1_study"]
    return cells


def seeds_of(cell: str) -> tuple[int, ...]:
    """The paper's cells run at every seed of SEEDS; the explanations and the federated counterpart at the first."""
    return SEEDS if cell.startswith("paper |") else SEEDS[:1]


CELLS = _cells()


def _short(report: dict) -> dict:
    return {"average_accuracy": report["accuracy"], "worst_group_accuracy": report["two_group_worst_group_accuracy"],
            "worst_group_accuracy_20": report["worst_group_accuracy"]}


def make_row(cell: str, seed: int, cache: TrainedTeacherCache) -> dict:
    overrides = [*CELLS[cell], f"seed={seed}"]
    summary, records, seconds, reused = run_cell(overrides, cache)
    setting, bias, teachers, method = (part.strip() for part in cell.split("|"))
    test, baselines = summary["test"], summary["baselines"]
    ensemble = baselines["ensemble"]
    members = [m["two_group_worst_group_accuracy"] for m in ensemble["members"]]
    references = {
        "teacher_mean": {"average_accuracy": float(np.mean([m["accuracy"] for m in ensemble["members"]])),
                         "worst_group_accuracy": float(np.mean(members))},
        "deep_ensemble_mean": _short(ensemble), "deep_ensemble_vote": _short(ensemble["vote"]),
    }
    for name in ("centralized_erm", "centralized_erm_dfr", "one_hot"):
        if name in baselines:
            references[name] = _short(baselines[name])
    return {
        "cell": cell, "seed": seed, "setting": setting, "bias_ratio": float(bias),
        "teachers": teachers.replace("dfr ", "dfr_"), "method": method, "overrides": overrides,
        "average_accuracy": test["accuracy"], "worst_group_accuracy": test["two_group_worst_group_accuracy"],
        "worst_group_accuracy_20": test["worst_group_accuracy"],
        "bias_aligned_accuracy": test["bias_aligned_accuracy"], "references": references,
        # AGRE-KD's biased reference and mean weights; AE-KD's mean weights (AdaptiveEnsemble.round_stats)
        "aggregator_stats": {k: v for k, v in records[-1]["aggregator_stats"].items()
                             if k in ("biased_client", "mean_weight_per_teacher", "teacher_weights_mean")},
        "teachers_reused": reused, "run_dir": summary["run_dir"], "seconds": seconds,
        # the row printer of studies.run_missing reads these two
        "accuracy": test["accuracy"],
    }


def _mean(rows: list[dict], key: str, reference: str | None = None) -> tuple[float, float, int] | None:
    """(mean, sample std, n) in %, the std NaN for one run (fedkd.run_groups.mean_std); None without rows."""
    values = [(r["references"][reference] if reference else r)[key] for r in rows
              if reference is None or reference in r["references"]]
    if not values:
        return None
    mean, std = mean_std(values)
    return 100 * mean, 100 * std, len(values)


def _spread(wga: tuple[float, float, int]) -> str:
    """`` ± std`` over the seeds, and how many of SEEDS ran where fewer did."""
    partial = "" if wga[2] >= len(SEEDS) else f", {wga[2]} of {len(SEEDS)} seeds"
    return ("" if np.isnan(wga[1]) else f" ± {wga[1]:.1f}") + partial


def _cell_text(ours: tuple | None, ours_wga: tuple | None, paper: tuple[float, float] | None) -> str:
    if paper is None:
        return "–" if ours is None or ours_wga is None else \
            f"{ours[0]:.1f} / {ours_wga[0]:.1f}{_spread(ours_wga)} (no such row in the paper)"
    if ours is None or ours_wga is None:
        return f"– (paper {paper[0]:.1f} / {paper[1]:.1f})"
    gap = ours_wga[0] - paper[1]
    return (f"{ours[0]:.1f} / {ours_wga[0]:.1f}{_spread(ours_wga)} (paper {paper[0]:.1f} / {paper[1]:.1f}; "
            f"WGA {gap:+.1f})")


def _paper_rows(rows: list[dict]) -> list[TableRow]:
    """The paper's layout: its reference rows, then one row per METHOD_ROWS entry and teacher kind."""
    out = []
    sources = {"Teacher": ("mean", "teacher_mean"), "Deep Ens.": ("mean", "deep_ensemble_mean"),
               "Deep Ens. (vote)": ("mean", "deep_ensemble_vote")}
    for label, (method, reference) in sources.items():
        for teachers in TEACHERS:
            got = [[r for r in rows if r["bias_ratio"] == b and r["teachers"] == teachers and r["method"] == method]
                   for b in BIASES]
            out.append(TableRow(label, label, label if (label, teachers) in PAPER else None, teachers,
                                [_mean(g, "average_accuracy", reference) for g in got],
                                [_mean(g, "worst_group_accuracy", reference) for g in got]))
    for teachers, reference in (("erm", "centralized_erm"), ("dfr", "centralized_erm_dfr")):
        got = [[r for r in rows if r["bias_ratio"] == b and r["teachers"] == "erm" and r["method"] == "mean"]
               for b in BIASES]
        out.append(TableRow("One-hot", "One-hot", "One-hot", teachers,
                            [_mean(g, "average_accuracy", reference) for g in got],
                            [_mean(g, "worst_group_accuracy", reference) for g in got]))
    for spec in METHOD_ROWS:
        for teachers in spec.teachers:
            got = [[r for r in rows if r["bias_ratio"] == b and r["teachers"] == teachers
                    and r["method"] == spec.method] for b in BIASES]
            out.append(TableRow(spec.label, spec.short, spec.paper_row, teachers,
                                [_mean(g, "average_accuracy") for g in got],
                                [_mean(g, "worst_group_accuracy") for g in got]))
    return out


def _table_lines(table: list[TableRow]) -> list[str]:
    """The paper table's markdown rows; where a paper row stands beside an earlier row of ours already, a cell
    without runs reads – alone."""
    lines, shown = [], set()
    for row in table:
        paper = PAPER.get((row.paper_row, row.teachers), (None,) * len(BIASES))
        again = row.paper_row is not None and (row.paper_row, row.teachers) in shown
        shown.add((row.paper_row, row.teachers))
        cells = ["–" if again and w is None else _cell_text(a, w, p)
                 for a, w, p in zip(row.average, row.wga, paper, strict=True)]
        lines.append(f"| {row.label} | {'ERM' if row.teachers == 'erm' else 'DFR'} | " + " | ".join(cells) + " |")
    return lines


def _plot(table: list[TableRow]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    for ax, teachers in zip(axes, TEACHERS, strict=True):
        drawn = set()
        for i, row in enumerate(r for r in table if r.teachers == teachers):
            colour = f"C{i % 10}"
            xs = [b for b, w in zip(BIASES, row.wga, strict=True) if w is not None]
            if xs:  # a row without runs yet keeps its colour but stays out of the legend
                ax.plot(xs, [w[0] for w in row.wga if w is not None], "o-", color=colour,
                        label=f"{row.short} (fedkd)")
            paper = PAPER.get((row.paper_row, teachers))
            if paper and row.paper_row not in drawn:  # the paper's line once, in its first row's colour
                drawn.add(row.paper_row)
                ax.plot(BIASES, [p[1] for p in paper], "x--", color=colour, alpha=0.6)
        ax.set_title(f"{'ERM' if teachers == 'erm' else 'DFR-debiased'} teachers (x--: the paper)")
        ax.set_xlabel("bias-aligned fraction of the training set")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("two-group WGA (%)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def _federated_table(rows: list[dict]) -> list[str]:
    lines = ["| setting | bias | DFR data | " + " | ".join(FEDERATED_METHODS) + " | teachers | one run |",
             "|---|---|---|" + "---|" * (len(FEDERATED_METHODS) + 2)]
    for partition in PARTITIONS:
        for bias in FEDERATED_BIASES:
            for dfr_data in ("public", "local"):
                got = [r for r in rows if r["setting"] == f"federated {partition}" and r["bias_ratio"] == bias
                       and r["teachers"] == f"dfr_{dfr_data}"]
                if not got:
                    continue
                cells = []
                for method in FEDERATED_METHODS:
                    mine = [r for r in got if r["method"] == method]
                    acc, wga = _mean(mine, "average_accuracy"), _mean(mine, "worst_group_accuracy")
                    cells.append("–" if acc is None else f"{acc[0]:.1f} / {wga[0]:.1f} (n={wga[2]})")
                teacher = _mean(got, "worst_group_accuracy", "teacher_mean")
                teacher_acc = _mean(got, "average_accuracy", "teacher_mean")
                seconds = np.mean([r["seconds"] for r in got])
                lines.append(f"| {partition} | {bias} | {dfr_data} | " + " | ".join(cells)
                             + f" | {teacher_acc[0]:.1f} / {teacher[0]:.1f} | {seconds:.0f} s |")
    return lines


def report() -> None:
    rows = read_rows(RESULTS)
    paper_rows = [r for r in rows if r["setting"] == "paper"]
    hours = sum(r["seconds"] for r in rows) / 3600
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "## AGRE-KD's Table 1, side by side (Colored MNIST)", "",
        "Commands (resumable; finished cells are skipped), two workers on 2 cores: "
        "`mkdir -p runs; nohup .venv/bin/python bench/table1_study.py --threads 1 > runs/table1_study.log 2>&1 &` "
        "and `nohup .venv/bin/python bench/table1_study.py --threads 1 --reverse > runs/table1_study.2.log 2>&1 &`, "
        "then `.venv/bin/python bench/table1_study.py --report-only`. Raw rows: `docs/table1_study.jsonl` (one "
        "object per run, with its overrides and provenance); plot: `docs/table1_study.png`. "
        f"{len(rows)} runs in {hours:.2f} h (in-process grid, CPU), seeds {seeds}.", "",
        "Setting: `experiment=agre_table1` (conf/experiment/agre_table1.yaml): 10 teachers, each on the whole "
        "55000-image biased pool of full MNIST with its own seed, distilled at τ = 4 without labels into the "
        "two-layer `cnn` on that same pool; DFR teachers: ERM base, last layer refitted group-balanced on half of "
        "the 5000-image labeled split (500 per digit, colours independent of the digit), L2 chosen on the other "
        "half; test: 10000 images, colours independent of the digit. WGA is the paper's two-group one (accuracy "
        "on the bias-conflicting test images); each cell: ours average / WGA, the WGA as "
        f"{MEAN_STD_NOTE} (the paper's average / WGA; our WGA minus the paper's). Teacher: the 10 teachers' mean; "
        "Deep Ens.: the mean of their probabilities, (vote): their majority vote; One-hot: the `cnn` trained with "
        "labels on the biased pool (`centralized_erm`), + DFR on the labeled split as the teachers' "
        "(`centralized_erm_dfr`). AE-KD and AGRE-KD have two rows of ours each, both beside the paper's one; a "
        "cell without runs reads –.", "",
        _departures(paper_rows), "",
        "| row | teachers | " + " | ".join(f"{100 * b:g} %" for b in BIASES) + " |",
        "|---|---|" + "---|" * len(BIASES),
    ]
    table = _paper_rows(paper_rows)
    lines += _table_lines(table)
    if paper_rows:
        _plot(table)
    lines += ["", "### The federated counterpart", "",
              "10 clients on disjoint shards of the same full-MNIST pool (IID, or Dirichlet α = 0.3 over labels), a "
              "held-out transfer pool (10 %), 2 rounds; DFR teachers with their head refitted on the server's "
              "public labeled split (`public`) or on 20 % of their own shard (`local`). Student average / two-group "
              "WGA (%); overrides in each row's `overrides`.", ""]
    lines += _federated_table([r for r in rows if r["setting"].startswith("federated")])
    lines += ["", "### Testing an explanation", "",
              "DFR teachers refitted on 5 labeled images per digit (50 in all, 25 to fit) instead of 500, otherwise "
              "the preset; student average / two-group WGA (%), teachers' mean in the last column.", "",
              "| bias | AVER | AGRE-KD | teachers |", "|---|---|---|---|"]
    for bias in EXPLAIN_BIASES:
        got = [r for r in rows if r["setting"].startswith("explain dfr") and r["bias_ratio"] == bias]
        if got:
            cells = []
            for method in ("mean", "agre"):
                acc, wga = (_mean([r for r in got if r["method"] == method], k) for k in
                            ("average_accuracy", "worst_group_accuracy"))
                cells.append("–" if acc is None else f"{acc[0]:.1f} / {wga[0]:.1f}")
            teacher = _mean(got, "worst_group_accuracy", "teacher_mean")
            lines.append(f"| {bias} | {cells[0]} | {cells[1]} | {teacher[0]:.1f} |")
    lines += _lr_explanation([r for r in rows if r["setting"] == LR_EXPLAIN], rows)
    if paper_rows:
        lines += _findings(rows, table)
    write_section("table1-study", lines)


def _cells_text(cells: list[tuple[float, str]]) -> str:
    """'99.5 % with DFR teachers and 95 % with ERM teachers' for (bias, teachers) pairs."""
    return _join([f"{100 * bias:g} % with {teachers.upper()} teachers" for bias, teachers in cells])


def _departures(paper_rows: list[dict]) -> str:
    """The preset's departures from the paper, with where the AE-KD and AGRE-KD variants have rows."""
    authors = sorted({(r["bias_ratio"], r["teachers"]) for r in paper_rows if r["method"] == "aekd"},
                     key=lambda cell: (-cell[0], cell[1]))
    return (
        "Departures from the paper's setting (the preset's comments): `cnn_wide` teachers instead of MobileNetV2; "
        "a calibrated SGD schedule (teachers lr 0.05, student 0.01) instead of the paper's lr 1e-3 with a cosine "
        "schedule and unstated epochs; DFR fitted on 2500 labeled images whose colours are independent of the "
        "digit (the paper: half of a validation set of unstated size and bias); AGRE-KD's per-example gradients "
        "taken over the student's last linear layer only, in closed form (`aggregator.gradient=last_layer`, the "
        f"default; the row \"{METHOD_ROW['agre'].label}\"), where the paper differentiates all the student's "
        f"parameters (`aggregator.gradient=per_sample aggregator.param_set=all`, the row "
        f"\"{METHOD_ROW[ALL_PARAMETERS].label}\"): that comparison exists at {_cells_text(list(ALL_PARAMETER_CELLS))}"
        " only; and AE-KD at the min-norm point with C = 1 (today `aggregator.tolerance=1 "
        "aggregator.gradient_scale=exact`; its rows at every bias ratio and teacher kind ran before AE-KD's "
        "default became the authors' code, fedkd/aggregators/aekd.py), where the paper most likely ran the "
        f"authors' code (C = {AekdConfig.tolerance:g}, gradients of their batch-mean loss, on which libsvm stops "
        "early): rows with those defaults "
        + (f"exist at {_cells_text(authors)} only." if authors else "have not run yet."))


def _wga(rows: list[dict], setting: str, bias: float, teachers: str, method: str,
         reference: str | None = None) -> float | None:
    got = [r for r in rows if r["setting"] == setting and r["bias_ratio"] == bias and r["teachers"] == teachers
           and r["method"] == method]
    mean = _mean(got, "worst_group_accuracy", reference)
    return None if mean is None else mean[0]


def _pairs(first: list[float | None], second: list[float | None]) -> str:
    return ", ".join(f"{100 * b:g} %: {x:.1f} → {y:.1f}" for b, x, y in zip(BIASES, first, second, strict=True)
                     if x is not None and y is not None)


def _twenty_group_line(rows: list[dict]) -> str:
    """AGRE-KD (head-only) against AVER with DFR teachers on the 20-group WGA (digit × aligned / conflicting),
    where the two-group ordering need not hold."""
    paper_rows = [r for r in rows if r["setting"] == "paper"]
    agre = METHOD_ROW["agre"].short
    below, not_below = [], []
    for bias in BIASES:
        aver_wga, agre_wga = (
            _mean([r for r in paper_rows if r["bias_ratio"] == bias and r["teachers"] == "dfr"
                   and r["method"] == method], "worst_group_accuracy_20") for method in ("mean", "agre"))
        if aver_wga is None or agre_wga is None:
            continue
        (below if agre_wga[0] < aver_wga[0] else not_below).append(
            f"{100 * bias:g} % ({agre_wga[0]:.1f} vs {aver_wga[0]:.1f})")
    if not below:
        return f"On the 20-group WGA (digit × aligned / conflicting) too, {agre} is at least as good as AVER."
    return ("That ordering does not hold on the 20-group WGA (digit × aligned / conflicting) of the same runs: "
            f"{agre} with DFR teachers is below AVER at {_join(below)}, at or above it at "
            f"{_join(not_below) if not_below else 'no bias ratio'} ({agre} vs AVER).")


def _join(items: list[str]) -> str:
    if not items:
        return "none"
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _erm_gap_line(gaps: dict[tuple[str, str], list[float | None]]) -> str:
    """How far our ERM-teacher rows sit from the paper's WGA, One-hot and Random apart (their own finding); names
    the rows it read, AE-KD's variant among them."""
    near, far, used = [], [], []
    for (name, teachers), row_gaps in gaps.items():
        if teachers != "erm" or name in ("One-hot", "Random"):
            continue
        if any(gap is not None for gap in row_gaps):
            used.append(name)
        for bias, gap in zip(BIASES, row_gaps, strict=True):
            if gap is None:
                continue
            if abs(gap) > NEAR_PAPER_POINTS:
                far.append(f"{name} at {100 * bias:g} % ({gap:+.1f})")
            else:
                near.append(gap)
    if not near:
        return "- **ERM rows.** No ERM-teacher row has run yet."
    return (f"- **ERM rows.** With ERM teachers our {_join(used)} rows sit within {NEAR_PAPER_POINTS:g} two-group "
            f"WGA points of the paper's ({min(near):+.1f} to {max(near):+.1f}) except {_join(far)}; the One-hot and "
            "Random rows are further off (below).")


def paired_by_seed(rows: list[dict], bias: float, teachers: str, method: str,
                   reference: str) -> tuple[list[tuple[int, float, float]], list[int]]:
    """``method`` minus ``reference`` in the paper's cell (bias, teachers), seed by seed: [(seed, Δ two-group WGA,
    Δ average accuracy)] in points, for the seeds where both ran on the same teachers (identical teacher means),
    and the seeds where both ran on different teachers, left unpaired."""
    def by_seed(name: str) -> dict[int, dict]:
        return {r["seed"]: r for r in rows if r["setting"] == "paper" and r["bias_ratio"] == bias
                and r["teachers"] == teachers and r["method"] == name}

    mine, theirs = by_seed(method), by_seed(reference)
    pairs, other_teachers = [], []
    for seed in sorted(mine.keys() & theirs.keys()):
        a, b = mine[seed], theirs[seed]
        if a["references"]["teacher_mean"] != b["references"]["teacher_mean"]:
            other_teachers.append(seed)
            continue
        pairs.append((seed, 100 * (a["worst_group_accuracy"] - b["worst_group_accuracy"]),
                      100 * (a["average_accuracy"] - b["average_accuracy"])))
    return pairs, other_teachers


def paired_line(rows: list[dict], bias: float, teachers: str, method: str, reference: str) -> str:
    """A finding: ``method`` against ``reference`` (two rows of METHOD_ROWS) paired by seed on the same teachers,
    the mean and per-seed differences, both means and the paper's number beside."""
    mine, theirs = METHOD_ROW[method], METHOD_ROW[reference]
    pairs, other_teachers = paired_by_seed(rows, bias, teachers, method, reference)
    n, missing = len(pairs), len(SEEDS) - len(pairs) - len(other_teachers)
    why = ([f"{len(other_teachers)} on other teachers"] if other_teachers else []) + (
        [f"{missing} still to run"] if missing else [])
    progress = f"all {len(SEEDS)} seeds" if n == len(SEEDS) else f"{n} of {len(SEEDS)} seeds; {', '.join(why)}"
    paper = PAPER[(mine.paper_row, teachers)][BIASES.index(bias)]
    kind = "debiased" if teachers == "dfr" else "ERM"
    text = (f"- **{mine.short} against {theirs.short} at {100 * bias:g} % with {teachers.upper()} teachers** "
            f"(paired by seed on the same teachers; {progress}). ")
    if pairs:
        seeds = [seed for seed, _, _ in pairs]

        def on_seeds(name: str, key: str) -> float:
            return 100 * float(np.mean([r[key] for r in rows if r["setting"] == "paper" and r["seed"] in seeds
                                        and r["bias_ratio"] == bias and r["teachers"] == teachers
                                        and r["method"] == name]))

        def per_seed(i: int) -> str:
            return ", ".join(f"seed {pair[0]} {pair[i]:+.1f}" for pair in pairs)

        text += (f"{mine.short} minus {theirs.short}: two-group WGA {np.mean([p[1] for p in pairs]):+.1f} points "
                 f"({per_seed(1)}), average accuracy {np.mean([p[2] for p in pairs]):+.1f} ({per_seed(2)}); "
                 f"average / two-group WGA on those seeds {on_seeds(method, 'average_accuracy'):.1f} / "
                 f"{on_seeds(method, 'worst_group_accuracy'):.1f} against {on_seeds(reference, 'average_accuracy'):.1f}"
                 f" / {on_seeds(reference, 'worst_group_accuracy'):.1f}, the paper's {mine.paper_row} with {kind} "
                 f"teachers {paper[0]:.1f} / {paper[1]:.1f}.")
    else:
        text += (f"No seed has both rows yet (the paper's {mine.paper_row} with {kind} teachers, average / "
                 f"two-group WGA: {paper[0]:.1f} / {paper[1]:.1f}).")
    if other_teachers:
        text += (f" Seed{'s' if len(other_teachers) > 1 else ''} {_join([str(s) for s in other_teachers])} ran on "
                 "other teachers than the row it would pair with, left out.")
    return text


def _paired_findings(rows: list[dict]) -> list[str]:
    """AGRE-KD's all-parameter gradient against its head-only closed form, and AE-KD's authors' defaults against
    the min-norm point, each where it has rows (or is planned)."""
    authors = {(r["bias_ratio"], r["teachers"]) for r in rows if r["setting"] == "paper" and r["method"] == "aekd"}
    lines = [paired_line(rows, bias, teachers, ALL_PARAMETERS, "agre") for bias, teachers in ALL_PARAMETER_CELLS]
    lines += [paired_line(rows, bias, teachers, "aekd", AEKD_MIN_NORM)
              for bias, teachers in sorted(authors | set(AEKD_AUTHORS_FIRST_CELLS), key=lambda c: (-c[0], c[1]))]
    return lines


def _findings(rows: list[dict], table: list[TableRow]) -> list[str]:
    """What the table shows and why it departs from the paper, every number read from ``rows``."""
    wga = {(row.short, row.teachers): [w[0] if w else None for w in row.wga] for row in table}
    gaps = {(row.short, row.teachers): [None if w is None else w - p[1] for w, p in
                                        zip(wga[(row.short, row.teachers)], PAPER[(row.paper_row, row.teachers)],
                                            strict=True)]
            for row in table if (row.paper_row, row.teachers) in PAPER}
    head_only = METHOD_ROW["agre"].short
    teachers_up = all(d is not None and e is not None and d > e
                      for d, e in zip(wga[("Teacher", "dfr")], wga[("Teacher", "erm")], strict=True))
    agre_up = all(g is not None and a is not None and g >= a
                  for g, a in zip(wga[(head_only, "dfr")], wga[("AVER", "dfr")], strict=True))
    erm_weightings = [spec.short for spec in METHOD_ROWS
                      if "erm" in spec.teachers and any(w is not None for w in wga[(spec.short, "erm")])]
    erm_spreads = [max(ws) - min(ws) for i in range(len(BIASES))
                   if len(ws := [wga[(name, "erm")][i] for name in erm_weightings
                                 if wga[(name, "erm")][i] is not None]) > 1]
    spread_text = (f" With ERM teachers {_join(erm_weightings)} sit within {max(erm_spreads):.1f} two-group WGA "
                   "points of each other at each bias ratio." if erm_spreads else "")
    lines = ["", "### What the table shows, and where it departs from the paper", "",
             f"- **Debiasing works.** DFR teachers {'beat' if teachers_up else 'do NOT beat'} ERM teachers on "
             f"two-group WGA at every bias ratio (mean of {len(SEEDS)} seeds; ERM → DFR: "
             f"{_pairs(wga[('Teacher', 'erm')], wga[('Teacher', 'dfr')])}), and on the two-group WGA {head_only} with "
             f"DFR teachers is {'at least as good as' if agre_up else 'NOT always as good as'} AVER with DFR "
             f"teachers (AVER → {head_only}: {_pairs(wga[('AVER', 'dfr')], wga[(head_only, 'dfr')])}). "
             + _twenty_group_line(rows) + spread_text,
             _erm_gap_line(gaps)]
    dfr_names = [key[0] for key, gs in gaps.items() if key[1] == "dfr" and key[0] not in ("One-hot", "Random")
                 and any(g is not None for g in gs)]
    dfr_gaps = [g for name in dfr_names for g in gaps[(name, "dfr")] if g is not None]
    explain = [r for r in rows if r["setting"].startswith("explain dfr")]
    if explain and dfr_gaps:
        cells, small_gaps = [], []
        for bias in EXPLAIN_BIASES:
            i = BIASES.index(bias)
            setting = explain[0]["setting"]
            aver, agre = (_wga(rows, setting, bias, "dfr", m) for m in ("mean", "agre"))
            teacher = _wga(rows, setting, bias, "dfr", "mean", "teacher_mean")
            small_gaps += [aver - PAPER[("AVER", "dfr")][i][1], agre - PAPER[("AGRE-KD", "dfr")][i][1],
                           teacher - PAPER[("Teacher", "dfr")][i][1]]
            cells.append(f"at {100 * bias:g} % AVER {aver:.1f} (paper {PAPER[('AVER', 'dfr')][i][1]:.1f}), "
                         f"AGRE-KD {agre:.1f} (paper {PAPER[('AGRE-KD', 'dfr')][i][1]:.1f}), teachers {teacher:.1f} "
                         f"(paper {PAPER[('Teacher', 'dfr')][i][1]:.1f})")
        lines.append(
            f"- **DFR rows (WGA {min(dfr_gaps):+.1f} to {max(dfr_gaps):+.1f}: {_join(dfr_names)}).** Our DFR refits "
            "the head on 2500 labeled images (250 per digit, colour independent of the digit, so 90 % of them "
            "bias-conflicting); the paper fits on half of its validation set without saying how large or how "
            "biased it is. Refitted on 25 images instead (5 per digit; the explanation table, run at 99.5 and "
            f"99 %), the gaps fall to {min(small_gaps):+.1f} to {max(small_gaps):+.1f}: " + "; ".join(cells)
            + ". The amount of bias-conflicting data DFR sees explains the gap; with that little data AGRE-KD "
            "falls below AVER instead of above it (the explanation ran AGRE-KD head-only).")
    lr_rows = [r for r in rows if r["setting"] == LR_EXPLAIN]
    far_rows = [g for key, gs in gaps.items() if key[0] in ("One-hot", "Random") for g in gs if g is not None]
    if lr_rows and far_rows:
        parts = []
        for label, method, reference in (("One-hot", "mean", "centralized_erm"), ("Random", "random", None),
                                         ("AVER", "mean", None), ("Teacher", "mean", "teacher_mean")):
            changes = []
            for bias in LR_EXPLAIN_BIASES:
                i = BIASES.index(bias)
                low = _wga(rows, LR_EXPLAIN, bias, "erm", method, reference)
                paper = PAPER[(label, "erm")][i][1]
                changes.append(f"{gaps[(label, 'erm')][i]:+.1f} → {low - paper:+.1f}")
            parts.append(f"{label} {' and '.join(changes)}")
        lines.append(
            f"- **One-hot and Random rows (WGA {min(far_rows):+.1f} to {max(far_rows):+.1f}).** The paper's One-hot "
            "and Random students sit far below "
            "its own teachers (at 95 %: 41.4 and 34.6 against 86.3), and its Random-DFR row falls as the bias "
            "weakens, unlike every other row. With the paper's SGD learning rate 1e-3 for teachers and students "
            "(our preset: 0.05 and 0.01, with the paper's epochs unstated) the gap to the paper at 99 and 95 % "
            "moves as " + "; ".join(parts) + ". The small learning rate undertrains everything at our epoch "
            "count: it closes most of the One-hot and Random gaps but opens the same gap on AVER and the "
            "teachers, so it does not reproduce the paper's ordering (Random far below AVER, with the same "
            "teachers). What the paper's Random and One-hot runs did differently is not in its text; we leave "
            "those two rows unexplained beyond this.")
    ens = gaps.get(("Deep Ens.", "erm"))
    if ens and ens[0] is not None and ens[0] > 10:
        ours_gain = wga[("Deep Ens.", "erm")][0] - wga[("Teacher", "erm")][0]
        paper_gain = PAPER[("Deep Ens.", "erm")][0][1] - PAPER[("Teacher", "erm")][0][1]
        lines.append(
            f"- **Deep Ens. with ERM teachers at 99.5 % (WGA {ens[0]:+.1f}).** Our single ERM teachers are "
            f"already {gaps[('Teacher', 'erm')][0]:+.1f} above the paper's (cnn_wide, not MobileNetV2: the "
            f"preset's note), and averaging our ten adds {ours_gain:+.1f} where the paper's ensemble is "
            f"{paper_gain:+.1f} against its mean teacher; less correlated teachers (each its own seed and "
            "initialisation, one pass over the pool) gain more from averaging. Not tested further.")
    lines += _paired_findings(rows)
    lines += _federated_findings(rows)
    return lines


def _federated_findings(rows: list[dict]) -> list[str]:
    """Which earlier federated findings survive debiased teachers: AGRE-KD under label skew, and the one-hot
    student on the server's labeled split."""
    fed = [r for r in rows if r["setting"].startswith("federated ") and r["setting"] != FEDERATED_ONE_HOT]
    if not fed:
        return []

    def at(partition: str, bias: float, dfr: str, method: str) -> float | None:
        return _wga(rows, f"federated {partition}", bias, f"dfr_{dfr}", method)

    skew, support_best, public_gain = [], True, []
    for bias in FEDERATED_BIASES:
        for dfr in ("public", "local"):
            dirichlet_all = [at("dirichlet 0.3", bias, dfr, m) for m in FEDERATED_METHODS]
            if None not in dirichlet_all:
                support_best &= max(dirichlet_all) == at("dirichlet 0.3", bias, dfr, "support")
            for partition in PARTITIONS:
                for method in FEDERATED_METHODS:
                    public, local = (at(partition, bias, d, method) for d in ("public", "local"))
                    if dfr == "public" and public is not None and local is not None:
                        public_gain.append(public - local)
            iid = (at("iid", bias, dfr, "agre"), at("iid", bias, dfr, "mean"))
            dirichlet = (at("dirichlet 0.3", bias, dfr, "agre"), at("dirichlet 0.3", bias, dfr, "mean"),
                         at("dirichlet 0.3", bias, dfr, "support"))
            if None not in iid + dirichlet:
                skew.append(f"{bias} {dfr}: IID {iid[0] - iid[1]:+.1f}, Dirichlet {dirichlet[0] - dirichlet[1]:+.1f}"
                            f" (support {dirichlet[2] - dirichlet[1]:+.1f})")
    lines = ["", "Federated (one seed): AGRE-KD minus AVER, two-group WGA points, and `support` minus AVER under "
             "label skew — " + "; ".join(skew) + ". AGRE-KD's edge over AVER on IID shards turns into a loss under "
             "Dirichlet 0.3 label skew, with debiased teachers too; the label-skew aware `support` weighting is "
             f"{'the best of the four in every Dirichlet cell' if support_best else 'not always the best there'}. "
             "Refitting DFR on the server's public split rather than on each client's own biased shard adds "
             f"{min(public_gain):+.1f} to {max(public_gain):+.1f} points, more than any weighting."]
    one_hot = [r for r in rows if r["setting"] == FEDERATED_ONE_HOT and "one_hot" in r["references"]]
    if one_hot:
        cells, survives = [], True
        for r in sorted(one_hot, key=lambda r: -r["bias_ratio"]):
            best = max(at(p, r["bias_ratio"], "public", m) or 0.0 for p in PARTITIONS for m in FEDERATED_METHODS)
            alone = 100 * r["references"]["one_hot"]["worst_group_accuracy"]
            survives &= alone > best
            cells.append(f"{r['bias_ratio']}: one-hot {alone:.1f} against the best distilled student {best:.1f}")
        lines.append("")
        lines.append("The one-hot student trained on the server's labeled split alone (5000 images, colours "
                     "independent of the digit; `baselines.one_hot=true`, 50 epochs), two-group WGA: "
                     + "; ".join(cells) + ". The earlier finding that it beats every distilled student "
                     + ("survives debiased teachers: a labeled split this large and this unbiased leaves the "
                        "clients nothing to add." if survives else "does not survive debiased teachers."))
    return lines


def _three_way(mine: list[dict], preset: list[dict], reference: str | None, paper: tuple[float, float]) -> str:
    """'ours at lr 1e-3 · ours at the preset's lr · the paper', each average / two-group WGA (%)."""
    out = []
    for chosen in (mine, preset):
        acc, wga = (_mean(chosen, k, reference) for k in ("average_accuracy", "worst_group_accuracy"))
        out.append("–" if acc is None else f"{acc[0]:.1f} / {wga[0]:.1f}")
    return f"{out[0]} · {out[1]} · {paper[0]:.1f} / {paper[1]:.1f}"


def _lr_explanation(rows: list[dict], all_rows: list[dict]) -> list[str]:
    """The paper's learning rate for teachers and student (ERM teachers): One-hot, AVER and Random beside the
    paper's and beside ours at the preset's learning rates (mean over the seeds each has)."""
    if not rows:
        return []
    lines = ["", "ERM teachers and every student trained with the paper's SGD learning rate 1e-3 (preset: teachers "
             "0.05, student 0.01), otherwise the preset; average / two-group WGA (%): at lr 1e-3 · at the preset's "
             "lr · in the paper.", "", "| bias | teachers | One-hot | AVER | Random |", "|---|---|---|---|---|"]
    for bias in LR_EXPLAIN_BIASES:
        got = [r for r in rows if r["bias_ratio"] == bias]
        if not got:
            continue
        preset = [r for r in all_rows if r["setting"] == "paper" and r["bias_ratio"] == bias and r["teachers"] == "erm"]
        i = BIASES.index(bias)
        cells = [_three_way(got, preset, "teacher_mean", PAPER[("Teacher", "erm")][i])]
        for method, reference, row in (("mean", "centralized_erm", "One-hot"), ("mean", None, "AVER"),
                                       ("random", None, "Random")):
            cells.append(_three_way([r for r in got if r["method"] == method],
                                    [r for r in preset if r["method"] == method], reference, PAPER[(row, "erm")][i]))
        lines.append(f"| {bias} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    study_main(__doc__, NAME, RESULTS, list(CELLS), SEEDS, make_row, report, seeds_of)
