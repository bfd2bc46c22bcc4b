"""Teacher weighting under federated label skew: every aggregator on identical teachers, Colored MNIST at 99 %
and 95 % and MNIST-LT, Dirichlet label skew α ∈ {1.0, 0.3, 0.1} and IID, and the acceptance setting under DP-SGD
teachers; through the in-process grid.

    .venv/bin/python bench/label_skew_study.py                 # every missing cell, then docs/results.md
    .venv/bin/python bench/label_skew_study.py --seeds 0 --match "cmnist 0.99 | 0.3 |"   # one teacher set
    .venv/bin/python bench/label_skew_study.py --report-only   # only rebuild the report and the plot

Setting: the federated counterpart of the Table 1 study (full MNIST, 10 clients on disjoint shards, a held-out
transfer pool of 10 %, cnn_wide DFR teachers refitted on the server's public labeled split, the `cnn` student,
2 rounds). Cells that differ only in the aggregator share their trained teachers and answers
(TrainedTeacherCache, in memory: run one setting's methods in one process, as ``--match "<dataset> | <α> |"``
does). Each row names its teachers twice: ``teacher_cache_key`` (what they depend on) and
``teachers_fingerprint`` (their measured test metrics): the same key trained on another CPU or with another number
of torch threads gives other teachers (float order differs; on one machine with the same threads a retrained set
has the same fingerprint), so the report pairs rows by fingerprint and never across two sets of teachers, and never
reads the key. The committed rows' keys were computed without the privacy mechanism's part of the clients' job, so
their DP-SGD rows carry the key of the non-private rows of the same setting and seed; the key now includes it.
Rows on teachers that no longer exist are kept in ``docs/label_skew_study_superseded.jsonl``.

Seeds: 0–2 everywhere. In the acceptance setting (Colored MNIST 99 %, Dirichlet 0.3 and IID) variants designed
after some seeds had been read run only on seeds that no choice of theirs saw, beside the mean and `reliability` on
the same teachers: ``reliability, weighted bias reference`` (designed after seeds 0–2) on 3–5, ``reliability,
agreement gate`` (designed after seeds 0–5, from the example weights' shares on seeds 0–2) on 6–8. The mean and
`reliability` run at 0–8 there, its two halves at 0–5.
"""

from __future__ import annotations

import hashlib
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from studies import MEAN_STD_NOTE, ROOT, format_mean_std, read_rows, run_cell, study_main, write_section  # noqa: E402

from fedkd.conf_dir import compose  # noqa: E402
from fedkd.teacher_store import training_job  # noqa: E402
from fedkd.validation import client_job, validate  # noqa: E402
from server.inprocess import TrainedTeacherCache  # noqa: E402

RESULTS = ROOT / "docs" / "label_skew_study.jsonl"
SUPERSEDED = ROOT / "docs" / "label_skew_study_superseded.jsonl"
PLOT = ROOT / "docs" / "label_skew_study.png"
NAME = "label-skew study"
SEEDS = (0, 1, 2, 3, 4, 5, 6, 7, 8)
STUDY_SEEDS = SEEDS[:3]
BASE = ["dataset.source=mnist", "dataset.test_per_class=1000", "dataset.val_per_class=500",
        "dataset.transfer_fraction=0.1", "teacher=dfr", "teacher.arch=cnn_wide", "teacher.epochs=2",
        "teacher.weight_decay=0.0001", "student.epochs=6", "student.weight_decay=0.0001", "federation.num_rounds=2",
        "runs_dir=runs/label_skew_study"]
METHODS = {"mean": ["aggregator=mean"], "support": ["aggregator=support"], "agre": ["aggregator=agre"],
           "agre_fed": ["aggregator=agre_fed"], "aekd": ["aggregator=aekd"], "random": ["aggregator=random"],
           "reliability": ["aggregator=reliability"],
           "reliability, teacher weights only": ["aggregator=reliability", "aggregator.example_weights=none"],
           "reliability, example weights only": ["aggregator=reliability", "aggregator.power=0"],
           "reliability, weighted bias reference": ["aggregator=reliability", "aggregator.bias_reference=reliability"],
           "reliability, agreement gate": ["aggregator=reliability", "aggregator.min_agreement=0.5"]}
WEIGHTED_REFERENCE = "reliability, weighted bias reference"
AGREEMENT_GATE = "reliability, agreement gate"
# variants designed after seeds had been read, and the seeds none of their choices saw, where alone they run
FRESH_SEEDS = {WEIGHTED_REFERENCE: SEEDS[3:6], AGREEMENT_GATE: SEEDS[6:9]}
BREADTH = [m for m in METHODS if m not in FRESH_SEEDS]
RELIABILITY = [m for m in BREADTH if m.startswith("reliability")]
# the seeds whose results a method's design read: its results there are no evidence for it, and the report keeps
# them apart from its fresh seeds
DESIGN_SEEDS = {**{m: STUDY_SEEDS for m in RELIABILITY}, WEIGHTED_REFERENCE: SEEDS[:3], AGREEMENT_GATE: SEEDS[:6]}
# dataset label -> (overrides, the methods it runs). DP-SGD teachers at ε 8 per client: the weightings that read no
# class counts (support and agre_fed would need noisy counts, another release and other teachers)
DATASETS = {"cmnist 0.99": (["dataset=cmnist", "dataset.bias_ratio=0.99"], list(METHODS)),
            "cmnist 0.95": (["dataset=cmnist", "dataset.bias_ratio=0.95"], BREADTH),
            "mnist_lt 10": (["dataset=mnist_lt", "dataset.imbalance=10"], BREADTH),
            "cmnist 0.99 dpsgd": (["dataset=cmnist", "dataset.bias_ratio=0.99", "privacy=dpsgd"],
                                  ["mean", "agre", *RELIABILITY])}
ALPHAS = (0.3, None, 1.0, 0.1)  # None: IID
PRIVATE_ALPHAS = (0.3, None)
ACCEPTANCE = ("cmnist 0.99", "0.3")
FRESH_SETTINGS = {ACCEPTANCE, (ACCEPTANCE[0], "iid")}  # where the fresh seeds run


def _partition(alpha: float | None) -> list[str]:
    if alpha is None:
        return ["partition=iid"]
    return ["partition=dirichlet", "partition.by=label", f"partition.alpha={alpha:g}"]


def _part(alpha: float | None) -> str:
    return "iid" if alpha is None else f"{alpha:g}"


def _settings() -> list[tuple[str, float | None]]:
    return [(d, a) for d in DATASETS for a in (PRIVATE_ALPHAS if d.endswith("dpsgd") else ALPHAS)]


def _cells() -> dict[str, list[str]]:
    cells = {}
    for dataset, alpha in _settings():
        data, methods = DATASETS[dataset]
        for method in methods:
            cells[f"{dataset} | {_part(alpha)} | {method}"] = [*BASE, *data, *_partition(alpha), *METHODS[method]]
    return cells


CELLS = _cells()


def seeds_of(cell: str) -> tuple[int, ...]:
    """The seeds a cell runs at: 0–2; in the acceptance setting also 3–5 for the reliability variants, 3–8 for the
    mean and `reliability`, and each late variant only at its own fresh seeds (module docstring)."""
    dataset, part, method = cell.split(" | ")
    fresh = (dataset, part) in FRESH_SETTINGS
    if method in FRESH_SEEDS:
        return FRESH_SEEDS[method] if fresh else ()
    if fresh and method in ("mean", "reliability"):
        return SEEDS
    return SEEDS[:6] if fresh and method in RELIABILITY else STUDY_SEEDS


def teacher_cache_key(overrides: list[str]) -> str:
    """What the teachers of a run depend on, hashed as ``TrainedTeacherCache`` keys them: the clients' job as the
    run's components shape it (what the privacy mechanism asks of the clients, DP-SGD included; the ERM base only
    where the teacher objective keeps it on request), never a server-side setting. Equal keys, the same teachers
    on one machine; another machine may train others from the same key (see ``teachers_fingerprint``)."""
    job = training_job(client_job(validate(compose(overrides))))  # the config alone: no data built for a key
    return hashlib.sha256(repr(job.training_key()).encode()).hexdigest()[:16]


def teachers_fingerprint(teachers: list[dict]) -> str:
    """The trained teachers as measured: every teacher's shard size and test metrics, hashed."""
    return hashlib.sha256(json.dumps(teachers, sort_keys=True).encode()).hexdigest()[:16]


def teachers_ensemble(summary: dict, cmnist: bool) -> dict | None:
    """The test metrics of the teachers' plain-mean ensemble (the run's evaluation-only baseline), WGA as in the
    row: what the student would reach by matching its teachers' average exactly. None where the run skipped it
    (under privacy, the test-set ensemble would be another release)."""
    ensemble = summary["baselines"].get("ensemble", {})
    if "accuracy" not in ensemble:
        return None
    return {"accuracy": ensemble["accuracy"],
            "worst_group_accuracy": ensemble["two_group_worst_group_accuracy" if cmnist else "worst_group_accuracy"]}


def make_row(cell: str, seed: int, cache: TrainedTeacherCache) -> dict:
    dataset, alpha, method = cell.split(" | ")
    overrides = [*CELLS[cell], f"seed={seed}"]
    summary, records, seconds, reused = run_cell(overrides, cache)
    test, last = summary["test"], records[-1]
    cmnist = dataset.startswith("cmnist")
    members = summary["baselines"].get("ensemble", {}).get("members", [])
    stats = last["aggregator_stats"]
    teachers = [{"partition_id": t["partition_id"], "num_examples": t["num_examples"],
                 "accuracy": t["test_accuracy"], "worst_group_accuracy": t["test_worst_group_accuracy"]}
                for t in sorted(last["teachers"], key=lambda t: t["partition_id"])]
    return {
        "cell": cell, "seed": seed, "dataset": dataset.split()[0],
        "bias_ratio": float(dataset.split()[1]) if cmnist else None,
        "imbalance": None if cmnist else float(dataset.split()[1]),
        "alpha": None if alpha == "iid" else float(alpha), "method": method,
        "privacy": "dpsgd" if dataset.endswith("dpsgd") else "none", "overrides": overrides,
        "accuracy": test["accuracy"],
        "worst_group_accuracy": test["two_group_worst_group_accuracy"] if cmnist else test["worst_group_accuracy"],
        "worst_group_accuracy_all_groups": test["worst_group_accuracy"],
        "teachers_mean_accuracy": float(np.mean([m["accuracy"] for m in members])) if members else None,
        "teachers_ensemble": teachers_ensemble(summary, cmnist),
        "epsilon": last.get("epsilon_spent"),
        "aggregator_stats": {k: v for k, v in stats.items()
                             if k in ("biased_client", "mean_weight_per_teacher", "upweighted_fraction",
                                      "max_example_weight", "example_weight_share_wrong_target",
                                      "example_weight_share_per_group")},
        "teachers": teachers,
        "teacher_cache_key": teacher_cache_key(overrides), "teachers_fingerprint": teachers_fingerprint(teachers),
        "teachers_reused": reused, "run_dir": summary["run_dir"], "seconds": seconds,
    }


def _setting(row: dict) -> tuple[str, str]:
    dataset, part, _ = row["cell"].split(" | ")
    return dataset, part


def paired_rows(rows: list[dict]) -> dict[tuple[str, str, int], dict[str, dict]]:
    """(dataset, α, seed) -> method -> row, on one set of teachers per (dataset, α, seed): the fingerprint with the
    most rows (the latest on a tie); rows on other teachers are left out of every table."""
    groups: dict[tuple[str, str, int], dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((*_setting(r), r["seed"]), {}).setdefault(r["teachers_fingerprint"], []).append(r)
    chosen = {}
    for key, by_print in groups.items():
        best = max(by_print.values(), key=lambda got: (len({r["method"] for r in got}), rows.index(got[-1])))
        chosen[key] = {r["method"]: r for r in best}
    return chosen


def _label(dataset: str, part: str) -> str:
    return f"{dataset}, {'IID' if part == 'iid' else f'Dirichlet {part}'}"


def paired_differences(paired: dict, dataset: str, part: str, method: str) -> list[tuple[int, float, float]]:
    """(seed, Δ accuracy, Δ WGA) of ``method`` minus the mean on the same teachers, in points."""
    out = []
    for (d, p, seed), got in sorted(paired.items()):
        if (d, p) == (dataset, part) and method in got and "mean" in got:
            out.append((seed, 100 * (got[method]["accuracy"] - got["mean"]["accuracy"]),
                        100 * (got[method]["worst_group_accuracy"] - got["mean"]["worst_group_accuracy"])))
    return out


def _delta_cell(diffs: list[tuple[int, float, float]]) -> str:
    if not diffs:
        return "–"
    acc, wga = np.array([d[1] for d in diffs]), np.array([d[2] for d in diffs])
    return (f"{acc.mean():+.1f} / {wga.mean():+.1f} ({int((acc > 0).sum())}/{len(diffs)}, "
            f"{int((wga > 0).sum())}/{len(diffs)})")


def _weights_line(paired: dict, dataset: str, part: str, method: str) -> str | None:
    """Where ``method``'s weight goes: correlation of a teacher's mean weight with its shard size and its test
    accuracy, per seed, then averaged."""
    with_size, with_acc, spread = [], [], []
    for (d, p, _), got in sorted(paired.items()):
        r = got.get(method) if (d, p) == (dataset, part) else None
        if r is None or "mean_weight_per_teacher" not in r["aggregator_stats"]:
            continue
        w = np.array(r["aggregator_stats"]["mean_weight_per_teacher"])
        size = np.array([t["num_examples"] for t in r["teachers"]])
        acc = np.array([t["accuracy"] for t in r["teachers"]])
        spread.append(f"{w.min():.3f}–{w.max():.3f}")
        if size.std() > 0:
            with_size.append(np.corrcoef(w, size)[0, 1])
        with_acc.append(np.corrcoef(w, acc)[0, 1])
    if not spread:
        return None
    return (f"| {_label(dataset, part)} | {method} | {', '.join(spread)} | "
            f"{format_mean_std(with_size) if with_size else 'equal shards'} | {format_mean_std(with_acc)} |")


PLOT_FLOOR = -25.0  # points: bars below are cut there so that the small differences stay readable


def _plot(paired: dict, settings: list[tuple[str, str]]) -> None:
    methods = [m for m in METHODS if m != "mean"]
    fig, axes = plt.subplots(1, 2, figsize=(16, 0.9 * len(settings) + 2.5), sharey=True)
    y = np.arange(len(settings))
    height = 0.8 / len(methods)
    for axis, column, title in ((axes[0], 1, "accuracy"), (axes[1], 2, "worst-group accuracy")):
        for k, method in enumerate(methods):
            values = [paired_differences(paired, d, p, method) for d, p in settings]
            means = np.array([np.mean([v[column] for v in got]) if got else np.nan for got in values])
            at = y + k * height - 0.4 + height / 2
            axis.barh(at, np.maximum(means, PLOT_FLOOR), height, label=method)
            for row in np.flatnonzero(means < PLOT_FLOOR):  # cut at the axis, the value written beside it
                axis.text(PLOT_FLOOR, at[row], f" {means[row]:.0f}", va="center", fontsize=6)
        axis.set_xlim(PLOT_FLOOR - 1, None)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_xlabel(f"{title}: method minus mean, points (paired, mean over seeds)")
    axes[0].set_yticks(y, [_label(d, p) for d, p in settings])
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Teacher weighting under label skew, on identical teachers (bench/label_skew_study.py)")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def _seed_span(seeds: list[int]) -> str:
    """``3–8`` for consecutive seeds, else ``0, 2, 5``."""
    seeds = sorted(set(seeds))
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _checks(skew: list[tuple[int, float, float]], iid: list[tuple[int, float, float]]) -> str:
    """The goal on these seeds: Dirichlet 0.3 ≥ +5 accuracy and ≥ +10 WGA points (mean over seeds, every seed
    above the mean), and ≥ −1 under IID."""
    acc, wga = np.array([d[1] for d in skew]), np.array([d[2] for d in skew])
    iid_acc, iid_wga = np.mean([d[1] for d in iid]), np.mean([d[2] for d in iid])
    iid_above = all(d[1] > 0 and d[2] > 0 for d in iid)
    checks = [(f"Dirichlet 0.3 accuracy {acc.mean():+.1f} (target ≥ +5, every seed > 0: {bool((acc > 0).all())})",
               acc.mean() >= 5 and (acc > 0).all()),
              (f"WGA {wga.mean():+.1f} (target ≥ +10, every seed > 0: {bool((wga > 0).all())})",
               wga.mean() >= 10 and (wga > 0).all()),
              (f"IID accuracy {iid_acc:+.1f}, WGA {iid_wga:+.1f} (target ≥ −1; both > 0 on every seed: {iid_above})",
               iid_acc >= -1 and iid_wga >= -1)]
    return "; ".join(f"{text}: {'met' if ok else 'NOT met'}" for text, ok in checks) + "."


def acceptance(paired: dict, method: str = "reliability") -> str:
    """The study's goal, read from the rows: at Colored MNIST 99 %, Dirichlet 0.3, ``method`` minus mean ≥ +5
    accuracy and ≥ +10 WGA points (mean over seeds, every seed in the same direction), and ≥ −1 under IID; judged
    on the seeds none of the method's choices saw, its design seeds (``DESIGN_SEEDS``) given apart."""
    skew = paired_differences(paired, *ACCEPTANCE, method)
    iid = paired_differences(paired, ACCEPTANCE[0], "iid", method)
    if not skew or not iid:
        return "Acceptance: not every seed has run yet."
    design = set(DESIGN_SEEDS.get(method, ()))
    fresh_skew, fresh_iid = ([d for d in got if d[0] not in design] for got in (skew, iid))
    design_skew, design_iid = ([d for d in got if d[0] in design] for got in (skew, iid))
    head = f"Acceptance (`{method}` minus `mean`, points)"
    if fresh_skew and fresh_iid:
        text = (f"{head}, on its fresh seeds {_seed_span([d[0] for d in fresh_skew + fresh_iid])} "
                f"({len(fresh_skew)} at Dirichlet 0.3, {len(fresh_iid)} IID; none of them read when it was "
                f"designed): " + _checks(fresh_skew, fresh_iid))
    else:
        text = f"{head}: no fresh seed has run at both Dirichlet 0.3 and IID yet."
    if design_skew:
        text += (f" On the seeds it was designed on, {_seed_span([d[0] for d in design_skew])} (no evidence for it; "
                 f"accuracy / WGA): Dirichlet 0.3 {np.mean([d[1] for d in design_skew]):+.1f} / "
                 f"{np.mean([d[2] for d in design_skew]):+.1f}")
        if design_iid:
            text += (f", IID {np.mean([d[1] for d in design_iid]):+.1f} / "
                     f"{np.mean([d[2] for d in design_iid]):+.1f}")
        text += "."
    return text


def teachers_ceiling(paired: dict, method: str = "reliability") -> str:
    """At the acceptance setting: the teachers' plain-mean ensemble on the test set beside the mean's student and
    ``method``'s, and on how many seeds the goal's +10 WGA asks for more than that ensemble reaches."""
    got = [g for k, g in sorted(paired.items()) if k[:2] == ACCEPTANCE and "mean" in g and method in g
           and g["mean"].get("teachers_ensemble")]
    if not got:
        return "The teachers' ensemble has not been recorded at the acceptance setting yet."
    ens = np.array([[g["mean"]["teachers_ensemble"]["accuracy"], g["mean"]["teachers_ensemble"]["worst_group_accuracy"]]
                    for g in got])
    mean = np.array([[g["mean"]["accuracy"], g["mean"]["worst_group_accuracy"]] for g in got])
    ours = np.array([[g[method]["accuracy"], g[method]["worst_group_accuracy"]] for g in got])
    above = int((mean[:, 1] + 0.10 > ens[:, 1]).sum())
    (ens_acc, ens_wga), (mean_acc, mean_wga), (our_acc, our_wga) = ens.mean(0), mean.mean(0), ours.mean(0)
    return (f"The teachers' ceiling ({_label(*ACCEPTANCE)}, {len(got)} seeds, accuracy / WGA): the teachers' "
            f"plain-mean ensemble reaches {ens_acc:.3f} / {ens_wga:.3f} on the test set, the mean's student "
            f"{mean_acc:.3f} / {mean_wga:.3f}, `{method}`'s student {our_acc:.3f} / {our_wga:.3f} "
            f"({(our_wga - ens_wga) * 100:+.1f} WGA points from the ensemble). The goal's +10 WGA asks for "
            f"{mean_wga + 0.10:.3f}: more than the teachers' ensemble on {above} of {len(got)} seeds.")


def _weight_shares(paired: dict, method: str, seeds: set[int] | None = None) -> dict[int, tuple[float, float, float]]:
    """seed -> (upweighted fraction, share of the example weight on bias-conflicting groups, share on wrong targets)
    of ``method`` at the acceptance setting, where its rows recorded them."""
    out = {}
    for (d, p, seed), got in sorted(paired.items()):
        stats = got[method]["aggregator_stats"] if (d, p) == ACCEPTANCE and method in got else {}
        if "example_weight_share_per_group" in stats and (seeds is None or seed in seeds):
            conflicting = sum(v for name, v in stats["example_weight_share_per_group"].items()
                              if name.endswith("conflicting"))
            out[seed] = (stats["upweighted_fraction"], conflicting, stats["example_weight_share_wrong_target"])
    return out


def pseudo_group_precision(paired: dict, method: str = "reliability") -> str:
    """At the acceptance setting: where ``method``'s example weights go (evaluation-only labels and groups): the
    share on the truly bias-conflicting transfer points, and on the points whose target's argmax is wrong; for
    another method than `reliability`, beside `reliability`'s on the same seeds."""
    shares = _weight_shares(paired, method)
    if not shares:
        return f"`{method}`'s example weights' shares have not been recorded at the acceptance setting yet."
    upweighted, conflicting, wrong = (list(v) for v in zip(*shares.values(), strict=True))
    conflicting_fraction = 1.0 - float(ACCEPTANCE[0].split()[1])  # the transfer set's, as the clients' data
    text = (f"Where `{method}`'s example weights go ({_label(*ACCEPTANCE)}, {len(shares)} seeds, last round, "
            f"evaluation-only labels): {format_mean_std(upweighted)} of the transfer points are upweighted "
            f"({conflicting_fraction:.0%} are bias-conflicting); the truly bias-conflicting points carry "
            f"{format_mean_std(conflicting)} of the weight, the points whose target's argmax is wrong "
            f"{format_mean_std(wrong)}")
    same = _weight_shares(paired, "reliability", set(shares)) if method != "reliability" else {}
    if same:
        _, base_conflicting, base_wrong = (list(v) for v in zip(*same.values(), strict=True))
        text += (f"; `reliability` on the same {len(same)} seeds: {format_mean_std(base_conflicting)} and "
                 f"{format_mean_std(base_wrong)}")
    return text + "."


def fresh_seed_comparison(paired: dict, variant: str) -> str:
    """A late ``variant`` against `reliability` on the seeds no choice of the variant saw (``FRESH_SEEDS``), so
    that the two are compared on the same teachers there."""
    seeds = FRESH_SEEDS[variant]
    parts = []
    for setting in (ACCEPTANCE, (ACCEPTANCE[0], "iid")):
        for method in ("reliability", variant):
            got = [d for d in paired_differences(paired, *setting, method) if d[0] in seeds]
            if got:
                parts.append(f"{_label(*setting)}, `{method}` {np.mean([d[1] for d in got]):+.1f} / "
                             f"{np.mean([d[2] for d in got]):+.1f} ({len(got)} seeds)")
    span = f"{seeds[0]}–{seeds[-1]}"
    return (f"On `{variant}`'s fresh seeds {span} alone (minus `mean`, accuracy / WGA points): " + "; ".join(parts)
            + "." if parts else f"The fresh seeds {span} have not run yet.")


def report() -> None:
    rows = read_rows(RESULTS)
    paired = paired_rows(rows)
    used = sum(len(got) for got in paired.values())
    hours = sum(r["seconds"] for r in rows) / 3600
    settings = [(d, _part(a)) for d, a in _settings() if any(k[:2] == (d, _part(a)) for k in paired)]
    lines = ["## Teacher weighting under label skew", "",
             "Command (resumable; the rows ran with `--threads 1`, one setting per process): `mkdir -p runs; "
             "nohup .venv/bin/python bench/label_skew_study.py --threads 1 > "
             f"runs/label_skew_study.log 2>&1 &`; each row's `provenance` has the command that ran it. Raw rows: "
             f"`docs/label_skew_study.jsonl`; plot: `docs/label_skew_study.png`. {len(rows)} runs in {hours:.2f} h "
             f"(in-process grid, CPU); {used} of them on one set of teachers per (setting, seed), the tables' rows; "
             f"{len(read_rows(SUPERSEDED))} earlier rows, on teachers that no row here shares (trained on other "
             "machines), are kept in "
             "`docs/label_skew_study_superseded.jsonl` and left out. "
             "Setting: bench/label_skew_study.py's docstring; overrides in each row. WGA: two-group (aligned / "
             "conflicting) for Colored MNIST, per class for MNIST-LT. Not every cell has run yet: '–'.", "",
             acceptance(paired), "",
             *[line for variant in FRESH_SEEDS
               for line in (acceptance(paired, variant), "", fresh_seed_comparison(paired, variant), "")],
             teachers_ceiling(paired), "", pseudo_group_precision(paired), "",
             pseudo_group_precision(paired, AGREEMENT_GATE), "",
             "Paired differences to `mean` on the same teachers, accuracy / WGA in points, mean over seeds (seeds "
             "where the method is above the mean in accuracy, in WGA). At the acceptance setting a mean over all of "
             "a method's seeds includes the seeds it was designed on (`reliability` and its halves: "
             f"{_seed_span(list(STUDY_SEEDS))}); the acceptance lines above give them apart.", "",
             "| setting | n | " + " | ".join(m for m in METHODS if m != "mean") + " |",
             "|---|---|" + "---|" * (len(METHODS) - 1)]
    for dataset, part in settings:
        n = len(paired_differences(paired, dataset, part, "mean"))
        lines.append(f"| {_label(dataset, part)} | {n} | " + " | ".join(
            _delta_cell(paired_differences(paired, dataset, part, m)) for m in METHODS if m != "mean") + " |")
    lines += ["", f"Accuracy / WGA, {MEAN_STD_NOTE}; n in parentheses:", "",
              "| setting | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for dataset, part in settings:
        cells = []
        for method in METHODS:
            got = [g[method] for k, g in sorted(paired.items()) if k[:2] == (dataset, part) and method in g]
            cells.append("–" if not got else f"{format_mean_std([r['accuracy'] for r in got])} / "
                         f"{format_mean_std([r['worst_group_accuracy'] for r in got])} ({len(got)})")
        lines.append(f"| {_label(dataset, part)} | " + " | ".join(cells) + " |")
    lines += ["", "Where the weight goes: the range of the teachers' mean weights per seed, and the correlation of "
              "a teacher's mean weight with its shard size and with its own test accuracy "
              f"({MEAN_STD_NOTE}):",
              "", "| setting | method | weight range per seed | corr. with shard size | corr. with teacher accuracy |",
              "|---|---|---|---|---|"]
    for dataset, part in settings:
        for method in ("agre", "agre_fed", "reliability"):
            line = _weights_line(paired, dataset, part, method)
            if line:
                lines.append(line)
    write_section("label-skew-study", lines)
    if settings:
        _plot(paired, settings)


if __name__ == "__main__":
    study_main(__doc__, NAME, RESULTS, list(CELLS), SEEDS, make_row, report, seeds_of)
