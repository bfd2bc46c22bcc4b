"""PATE's regime (Papernot et al. 2018, "Scalable Private Learning with PATE", arXiv 1802.08908): hundreds of
clients on disjoint shards of full MNIST, plain and Confident GNMax with the paper's MNIST parameters, the
data-dependent ε beside the data-independent one, which groups the threshold refuses, central Gaussian and DP-SGD
at the same ε, and an offline LiRA attack (Carlini et al. 2022) on the teachers; through the in-process grid.

    .venv/bin/python bench/pate_study.py                 # every missing cell, then docs/results.md
    .venv/bin/python bench/pate_study.py --report-only   # only rebuild the report and the plots

Setting: 60 000 MNIST training images, 10 % held out as the unlabeled transfer pool (6 000, the student's public
data; the paper uses half of the MNIST test set), the rest split IID over 100 or 250 clients (216 or 540 images
each), one round, 640 random transfer queries (the authors' MNIST analysis: generate_table.sh in
tensorflow/privacy research/pate_2018), δ = 1e-5, CNN teachers and student. The student learns from the answered
labels alone (the paper's is semi-supervised on the rest of the public data too). Cells that differ only on the
server share trained teachers (TrainedTeacherCache); the central-Gaussian and DP-SGD cells of a dataset take the
ε its Confident-GNMax cell spent (run first, same seed).
"""

from __future__ import annotations

import io
import resource
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from privacy_study import RecordingGrid, group_columns  # noqa: E402
from rich.console import Console  # noqa: E402
from studies import ROOT, provenance, read_rows, study_main, write_section  # noqa: E402

from fedkd.data import federated_data  # noqa: E402
from fedkd.membership import (  # noqa: E402
    attack_metrics,
    example_losses,
    lira_offline_scores,
    logit_confidence,
    membership_auc,
)
from fedkd.models import build_model  # noqa: E402
from fedkd.protocol import STATE_PREFIX  # noqa: E402
from fedkd.results import read_metrics  # noqa: E402
from fedkd.training import predict_logits  # noqa: E402
from fedkd.validation import load_run_config  # noqa: E402
from server.app import run_federation  # noqa: E402
from server.inprocess import TrainedTeacherCache  # noqa: E402

RESULTS = ROOT / "docs" / "pate_study.jsonl"
NAME = "pate study"
SEEDS = (0,)
DELTA = 1e-5
QUERIES = 640
BASE = ["teacher=erm", "dataset.source=mnist", "dataset.transfer_fraction=0.1", "dataset.test_per_class=500",
        "federation.num_rounds=1", "teacher.epochs=10", "query=random", f"query.per_round={QUERIES}",
        "student.epochs=5", "student.min_steps=1500", "baselines.ensemble=false", "runs_dir=runs/pate_study"]
DATASETS = {"mnist": ["dataset=mnist_lt", "dataset.imbalance=1"],
            "cmnist 0.99": ["dataset=cmnist", "dataset.bias_ratio=0.99"],
            "mnist_lt 10": ["dataset=mnist_lt", "dataset.imbalance=10"]}
# The paper's MNIST row (Table 1; as recalled in METHODS.md, the paper's PDF was not reachable from here):
# Confident GNMax T = 200, σ1 = 150, σ2 = 40 with 250 teachers: 286 queries answered, ε = 1.97 (δ = 1e-5, after
# smooth-sensitivity), student 98.5 %; LNMax (the 2017 PATE): 100 queries, ε = 2.04, student 98.0 %.
PAPER = {"queries_answered": 286, "epsilon": 1.97, "accuracy": 0.985}


def _gnmax(sigma: float, threshold: float | None = None, sigma1: float | None = None) -> list[str]:
    out = ["aggregator=vote", "privacy=gnmax", "privacy.epsilon=null", f"privacy.noise_multiplier={sigma:g}"]
    if threshold is not None:
        out += [f"privacy.threshold={threshold:g}", f"privacy.threshold_sigma={sigma1:g}"]
    return out


def _cells() -> dict[str, list[str]]:
    """name → overrides. Name: dataset | clients | mechanism | parameters. Per dataset the confident cell runs
    before the cells matched to its ε."""
    confident = {250: (200, 150, 40), 100: (80, 60, 16)}  # 100 clients: the paper's parameters scaled by 100/250
    cells: dict[str, list[str]] = {}
    for dataset, data in DATASETS.items():
        sizes = (250, 100) if dataset == "mnist" else (250,)
        for m in sizes:
            t, s1, s2 = confident[m]
            clients = [f"federation.num_clients={m}"]
            cells[f"{dataset} | {m} | none | vote"] = [*data, *clients, "aggregator=vote"]
            cells[f"{dataset} | {m} | gnmax | T={t} s1={s1} s2={s2}"] = [*data, *clients, *_gnmax(s2, t, s1)]
            if m == 250:
                if dataset == "mnist":
                    cells[f"{dataset} | {m} | gnmax | s2={s2}"] = [*data, *clients, *_gnmax(s2)]
                cells[f"{dataset} | {m} | central_gaussian | matched"] = [*data, *clients, "aggregator=mean",
                                                                          "privacy=central_gaussian"]
                cells[f"{dataset} | {m} | dpsgd | matched"] = [*data, *clients, "aggregator=vote", "privacy=dpsgd"]
    return cells


CELLS = _cells()


def _matched_epsilon(cell: str, seed: int) -> float:
    """The data-independent ε the same dataset's 250-client Confident-GNMax cell spent (same seed)."""
    dataset = cell.split(" | ")[0]
    source = next(c for c in CELLS if c.startswith(f"{dataset} | 250 | gnmax | T="))
    rows = [r for r in read_rows(RESULTS) if r["cell"] == source and r["seed"] == seed]
    if not rows:
        raise RuntimeError(f"{cell}: run '{source}' (seed {seed}) first: this cell takes the ε it spent")
    return round(rows[0]["epsilon_data_independent"], 3)


def _teacher(grid: RecordingGrid, cfg, bench, pid: int) -> torch.nn.Module:
    model = build_model(cfg.teacher.arch, bench.input_shape, bench.num_classes, seed=0)
    model.load_state_dict(grid.contexts[pid + 1].state[STATE_PREFIX + "teacher"].to_torch_state_dict())
    return model


def attack(grid: RecordingGrid, cfg, run_dir: str, seed: int, targets: int = 8, shadows: int = 16,
           nonmembers: int = 1000) -> dict:
    """Offline LiRA on ``targets`` teachers: each teacher's whole shard as members, transfer points no one trained
    on (and the student never saw) as non-members, the next ``shadows`` teachers (disjoint shards, same recipe:
    models that did not train on any candidate) as the OUT distribution. Plus the loss-threshold attack on the
    same teachers and on the student (members: a sample of the clients' shards)."""
    data = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
    bench = data.benchmark
    transfer = bench["transfer"]
    rng = np.random.default_rng([seed, 13])
    out = grid.unqueried_sample(transfer, rng, nonmembers)
    shadow_models = [_teacher(grid, cfg, bench, pid) for pid in range(targets, targets + shadows)]
    lira, loss = [], []
    for pid in range(targets):
        shard = data.shard(pid)
        x, y = np.concatenate([shard.x, out.x]), np.concatenate([shard.y, out.y])
        model = _teacher(grid, cfg, bench, pid)
        scores = lira_offline_scores(logit_confidence(model, x, y),
                                     np.stack([logit_confidence(s, x, y) for s in shadow_models]))
        lira.append(attack_metrics(scores[:len(shard)], scores[len(shard):]))
        losses = example_losses(model, x, y)
        loss.append(attack_metrics(-losses[:len(shard)], -losses[len(shard):]))
    pool = bench["pool"]
    members = pool.subset(rng.choice(len(pool), size=min(nonmembers, len(pool)), replace=False))
    student = build_model(cfg.student.arch, bench.input_shape, bench.num_classes, seed=0)
    student.load_state_dict(torch.load(f"{run_dir}/student.pt"))
    student_auc = membership_auc(example_losses(student, members.x, members.y),
                                 example_losses(student, out.x, out.y), members.g, out.g, bench.group_names)
    mean = {k: float(np.mean([a[k] for a in lira])) for k in lira[0]}
    return {"mia_auc_teachers": mean["auc"], "mia_tpr_at_fpr_0.01_teachers": mean["tpr_at_fpr_0.01"],
            "mia_tpr_at_fpr_0.001_teachers": mean["tpr_at_fpr_0.001"],
            "mia_loss_auc_teachers": float(np.mean([a["auc"] for a in loss])),
            "mia_loss_auc_student": student_auc["auc"]}


def _vote_per_group(grid: RecordingGrid, cfg, num_teachers: int) -> dict:
    """The noiseless plurality of the teachers on the queried points, per group: the label a vote would release
    without noise (for the cells whose release logs no labels: no privacy, DP-SGD teachers)."""
    data = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
    bench = data.benchmark
    queried = bench["transfer"].subset(grid.fedkd_queried)
    votes = np.zeros((len(queried), bench.num_classes), dtype=np.int64)
    for pid in range(num_teachers):
        pred = predict_logits(_teacher(grid, cfg, bench, pid), queried.x).argmax(1).numpy()
        votes[np.arange(len(pred)), pred] += 1
    correct = votes.argmax(1) == queried.y
    return {bench.group_names[g]: {"asked": int((queried.g == g).sum()), "answered": int((queried.g == g).sum()),
                                   "correct": int(correct[queried.g == g].sum())} for g in np.unique(queried.g)}


def make_row(cell: str, seed: int, cache: TrainedTeacherCache) -> dict:
    dataset, clients, mechanism, params = cell.split(" | ")
    overrides = [*BASE, *CELLS[cell], f"seed={seed}"]
    if params == "matched":
        overrides.append(f"privacy.epsilon={_matched_epsilon(cell, seed)}")
    cfg = load_run_config(overrides)
    start, hits = time.perf_counter(), cache.hits
    grid = RecordingGrid(cache, cfg.federation.num_clients)
    summary = run_federation(grid, cfg, console=Console(file=io.StringIO()))
    seconds = time.perf_counter() - start
    record = read_metrics(summary["run_dir"])[-1]
    query = record["query"]
    per_group = query.get("per_group") or _vote_per_group(grid, cfg, cfg.federation.num_clients)
    answered = sum(g["answered"] for g in per_group.values())
    correct = sum(g["correct"] for g in per_group.values())
    privacy = summary["privacy"]
    p = cfg.privacy
    test = summary["test"]
    row = {
        "cell": cell, "seed": seed, "dataset": dataset, "num_clients": int(clients), "mechanism": mechanism,
        "aggregator": cfg.aggregator.name, "threshold": getattr(p, "threshold", None),
        "sigma1": getattr(p, "threshold_sigma", None),
        "sigma2": p.noise_multiplier if mechanism == "gnmax" else None,
        "noise_multiplier": privacy.get("noise_multiplier"),
        "queries_asked": int(query["num_new"]), "queries_answered": answered,
        "answered_label_accuracy": correct / answered if answered else None,
        "epsilon_data_independent": summary["epsilon_spent"],
        "epsilon_data_dependent": privacy.get("epsilon_data_dependent", summary["epsilon_spent"]),
        "epsilon_data_independent_classic": privacy.get("epsilon_classic"),
        "epsilon_data_dependent_classic": privacy.get("epsilon_data_dependent_classic"),
        "delta": summary["delta"], "accuracy": test["accuracy"], "worst_group_accuracy": test["worst_group_accuracy"],
        "two_group_worst_group_accuracy": test.get("two_group_worst_group_accuracy"),
        "per_group_accuracy": test["per_group_accuracy"], "per_group_answers": per_group,
        "teachers_mean_accuracy": summary["teachers"]["mean_accuracy"], "overrides": overrides,
        **attack(grid, cfg, summary["run_dir"], seed),
        "teachers_reused": cache.hits > hits, "run_dir": summary["run_dir"], "seconds": seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    return row


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _label(cell: str) -> str:
    """A cell's name as a markdown table cell (its fields joined by · instead of |)."""
    return cell.replace(" | ", " · ")


PLOTS = [f"pate_study_{d.replace(' ', '_')}.png" for d in DATASETS]


def _table(rows: list[dict]) -> list[str]:
    lines = ["| cell | asked | answered | answered-label acc. | ε DI (Opacus / classic) | ε DD (Opacus / classic) | "
             "teachers acc. | student acc. | WGA | LiRA AUC | TPR @ 0.1 % FPR | loss AUC teachers / student |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in CELLS:
        got = [r for r in rows if r["cell"] == cell]
        if not got:
            lines.append(f"| {_label(cell)} | " + " | ".join(["–"] * 11) + " |")
            continue
        r = got[0]
        private = r["mechanism"] != "none"
        eps_di = f"{_fmt(r['epsilon_data_independent'], 2)} / {_fmt(r['epsilon_data_independent_classic'], 2)}"
        eps_dd = f"{_fmt(r['epsilon_data_dependent'], 2)} / {_fmt(r['epsilon_data_dependent_classic'], 2)}"
        wga = r["two_group_worst_group_accuracy"] if r["dataset"].startswith("cmnist") else r["worst_group_accuracy"]
        lines.append(
            f"| {_label(cell)} | {r['queries_asked']} | {r['queries_answered']} | "
            f"{_fmt(r['answered_label_accuracy'])} | "
            f"{eps_di if private else '∞'} | {eps_dd if r['mechanism'] == 'gnmax' else '–'} | "
            f"{_fmt(r['teachers_mean_accuracy'])} | {_fmt(r['accuracy'])} | {_fmt(wga)} | "
            f"{_fmt(r['mia_auc_teachers'])} | {_fmt(r['mia_tpr_at_fpr_0.001_teachers'], 4)} | "
            f"{_fmt(r['mia_loss_auc_teachers'])} / {_fmt(r['mia_loss_auc_student'])} |")
        if cell == "mnist | 250 | gnmax | T=200 s1=150 s2=40":
            lines.append(f"| paper (Table 1, MNIST, Confident GNMax) | 640 | {PAPER['queries_answered']} | – | – | "
                         f"– / {PAPER['epsilon']:.2f} (classic; smooth-sensitivity release) | – | "
                         f"{PAPER['accuracy']:.3f} | – | – | – | – |")
    return lines


def _per_group(rows: list[dict], dataset: str) -> tuple[list[str], list[str], dict[str, dict[str, list[float]]]]:
    """Per mechanism of ``dataset`` (250 clients): share of its queries answered, accuracy of the answered labels
    and the student's test accuracy, per group (Colored MNIST's 20 groups pooled into aligned / conflicting)."""
    got = [r for r in rows if r["dataset"] == dataset and r["num_clients"] == 250]
    if not got:
        return [], [], {}
    columns = group_columns(list(got[0]["per_group_accuracy"]))
    labels, out = [], {}
    for r in got:
        answers, accuracy = r["per_group_answers"], r["per_group_accuracy"]
        label = f"{r['mechanism']} {r['cell'].split(' | ')[3]}"
        labels.append(label)
        stats = {"answered": [], "label_accuracy": [], "test_accuracy": []}
        for groups in columns.values():
            asked = sum(answers.get(g, {}).get("asked", 0) for g in groups)
            answered = sum(answers.get(g, {}).get("answered", 0) for g in groups)
            correct = sum(answers.get(g, {}).get("correct", 0) for g in groups)
            stats["answered"].append(answered / asked if asked else np.nan)
            stats["label_accuracy"].append(correct / answered if answered else np.nan)
            stats["test_accuracy"].append(float(np.mean([accuracy[g] for g in groups])))
        out[label] = stats
    return list(columns), labels, out


def _group_lines(rows: list[dict]) -> list[str]:
    lines = []
    for dataset in DATASETS:
        columns, labels, stats = _per_group(rows, dataset)
        if not labels:
            continue
        lines += ["", f"Per group, {dataset}, 250 clients: share of the group's queries answered · accuracy of its "
                  "answered labels · the student's test accuracy on it (cells: answered · label acc. · test acc.):",
                  "", "| mechanism | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for label in labels:
            s = stats[label]
            lines.append(f"| {label} | " + " | ".join(
                f"{_fmt(a, 2)} · {_fmt(b, 2)} · {_fmt(c, 2)}"
                for a, b, c in zip(s["answered"], s["label_accuracy"], s["test_accuracy"], strict=True)) + " |")
    return lines


def plot(rows: list[dict]) -> None:
    """One figure per dataset: per group, the share of queries answered, the accuracy of the answered labels and
    the student's test accuracy, one bar per mechanism."""
    for dataset in DATASETS:
        columns, labels, stats = _per_group(rows, dataset)
        if not labels:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(max(12, 1.2 * len(columns) * 3), 3.8), squeeze=False)
        width = 0.8 / len(labels)
        x = np.arange(len(columns))
        titles = {"answered": "share of queries answered", "label_accuracy": "answered-label accuracy",
                  "test_accuracy": "student test accuracy"}
        for ax, (key, title) in zip(axes[0], titles.items(), strict=True):
            for i, label in enumerate(labels):
                ax.bar(x + (i - (len(labels) - 1) / 2) * width, np.nan_to_num(stats[label][key]), width, label=label)
            ax.set_xticks(x, columns, fontsize=8)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{dataset}, 250 clients: {title}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(ROOT / "docs" / PLOTS[list(DATASETS).index(dataset)], dpi=110)
        plt.close(fig)


def report() -> None:
    rows = read_rows(RESULTS)
    lines = ["## PATE's regime", "", provenance("pate_study", rows, PLOTS) + f" Base overrides `{' '.join(BASE)}`, δ = "
             f"{DELTA:g}, seed 0. ε DI: data-independent; DD: data-dependent (GNMax: the threshold step charged "
             "on every query and the noisy arg-max on the answered ones, Theorem 6 of the paper; no smooth "
             "sensitivity). 'Opacus' converts RDP to (ε, δ) with Opacus' tighter conversion, 'classic' with "
             "Mironov's Proposition 3 (the paper's): compare the paper's ε with the classic column. The "
             "data-dependent ε is not itself a DP guarantee: it is a function of the teachers' votes, so publishing "
             "it leaks about their data; the paper's figure is released through smooth sensitivity (its Section "
             "4.2), which fedkd does not implement, so ours is for comparison only and the run's guarantee is the "
             "data-independent ε. LiRA: offline variant on 8 teachers, 16 other teachers as "
             "OUT models, members their shards, non-members 1000 unqueried transfer points; TPR at 0.1 % FPR. "
             "WGA: two-group for Colored MNIST, per class otherwise.", "", *_table(rows),
             *_group_lines(rows)]
    if rows:
        plot(rows)
    lines += [""] + [f"![{d}]({png})" for d, png in zip(DATASETS, PLOTS, strict=True) if (ROOT / "docs" / png).exists()]
    write_section("pate_study", lines)


def main() -> None:
    study_main(__doc__, NAME, RESULTS, list(CELLS), SEEDS, make_row, report)


if __name__ == "__main__":
    main()
