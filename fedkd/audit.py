"""``fedkd audit <runs or study folder>``: membership inference against a finished run's teachers and student, by
an auditor with the simulation's privileged access: the clients' trained teachers from the teacher store (the run
must have had ``teacher_store_dir``), their shards rebuilt from the config. No client would hand these over in a
deployment; the audit measures what an attacker holding the models could learn.

The attack is the loss-threshold one (Yeom et al. 2018, ``fedkd.membership.membership_auc``): members are a sample
of a client's shard (each teacher) or of the pooled client data (the student); non-members are transfer points no
teacher was asked about (``queried.npy``), so neither the teachers nor the student saw them. AUC 0.5: nothing the
attack can see. With ``--lira T,S`` also offline LiRA (Carlini et al. 2022) on T teachers, calibrated on S others
(what PATE's regime of many small shards calls for). Written to ``<run>/audit.json``; `fedkd report` shows it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml

from fedkd.config import RunConfig
from fedkd.data import FederatedData, Split, federated_data
from fedkd.membership import attack_metrics, example_losses, lira_offline_scores, logit_confidence, membership_auc
from fedkd.models import build_model
from fedkd.results import CLIENT_JOB_FILE, CONFIG_FILE, QUERIED_FILE, STUDENT_FILE, SUMMARY_FILE
from fedkd.teacher_store import TeacherStore, teacher_identity
from fedkd.validation import parse_client_job, validate

AUDIT_FILE = "audit.json"
SAMPLE = 500  # members and non-members per attack
MIN_NONMEMBERS = 50


class AuditError(RuntimeError):
    """A run the audit cannot attack, and why."""


def _sample(split: Split, rng: np.random.Generator, size: int) -> Split:
    return split.subset(rng.choice(len(split), size=min(size, len(split)), replace=False))


def _teachers(run_dir: Path, cfg: RunConfig, bench_input: tuple, num_classes: int) -> list[torch.nn.Module]:
    """Every client's last teacher, read from the store by the job the run wrote."""
    store = TeacherStore(cfg.teacher_store_dir)
    job = parse_client_job((run_dir / CLIENT_JOB_FILE).read_text())
    models = []
    for pid in range(cfg.federation.num_clients):
        entry = store.read(teacher_identity(job, pid, cfg.federation.num_rounds))
        if entry is None:
            raise AuditError(f"{run_dir}: client {pid}'s last teacher is not in the store {cfg.teacher_store_dir} "
                             "(a relative store is read from the current folder: run the audit where the run ran; "
                             "or the teachers were trained by other code, or the store was cleared)")
        model = build_model(cfg.teacher.arch, bench_input, num_classes, seed=0)
        model.load_state_dict(entry[0]["teacher"])
        models.append(model)
    return models


def audit_run(run_dir: Path, sample: int = SAMPLE, lira: tuple[int, int] | None = None) -> dict:
    """The loss-threshold attack's AUC on every teacher (their mean, and per group) and on the student; with
    ``lira = (targets, shadows)`` also offline LiRA on the first ``targets`` teachers (members: each one's whole
    shard), calibrated on the next ``shadows`` (trained on other shards: models that saw no candidate; Carlini et
    al. 2022, Sec. V-B). Written to audit.json."""
    run_dir = Path(run_dir)
    if not (run_dir / SUMMARY_FILE).is_file():
        raise AuditError(f"{run_dir}: not a finished run (no {SUMMARY_FILE})")
    missing = [f for f in (CLIENT_JOB_FILE, QUERIED_FILE, STUDENT_FILE) if not (run_dir / f).is_file()]
    if missing:
        raise AuditError(f"{run_dir}: no {', '.join(missing)} (written by runs of this version of fedkd)")
    cfg: RunConfig = validate(yaml.safe_load((run_dir / CONFIG_FILE).read_text()))
    if not cfg.teacher_store_dir:
        raise AuditError(f"{run_dir}: the audit reads the clients' teachers from the teacher store; the run had no "
                         "teacher_store_dir (every study job has one)")
    if lira is not None and sum(lira) > cfg.federation.num_clients:
        raise AuditError(f"{run_dir}: LiRA on {lira[0]} teachers calibrated on {lira[1]} others needs "
                         f"{sum(lira)} clients; the run had {cfg.federation.num_clients}")
    data = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
    bench = data.benchmark
    transfer = bench["transfer"]
    unseen = np.setdiff1d(np.arange(len(transfer)), np.load(run_dir / QUERIED_FILE))
    if len(unseen) < MIN_NONMEMBERS:
        raise AuditError(f"{run_dir}: only {len(unseen)} transfer points were never queried: too few non-members "
                         f"(at least {MIN_NONMEMBERS}; a query budget leaves them)")
    teachers = _teachers(run_dir, cfg, bench.input_shape, bench.num_classes)
    rng = np.random.default_rng([cfg.seed, 11])
    nonmember = transfer.subset(rng.choice(unseen, size=min(sample, len(unseen)), replace=False))

    def attack(model: torch.nn.Module, members: Split) -> dict:
        return membership_auc(example_losses(model, members.x, members.y),
                              example_losses(model, nonmember.x, nonmember.y), members.g, nonmember.g,
                              bench.group_names)

    by_teacher = [attack(model, _sample(data.shard(pid), rng, sample)) for pid, model in enumerate(teachers)]
    student = build_model(cfg.student.arch, bench.input_shape, bench.num_classes, seed=0)
    student.load_state_dict(torch.load(run_dir / STUDENT_FILE, weights_only=True))
    student_auc = attack(student, _sample(bench["pool"], rng, sample))
    groups = sorted({g for t in by_teacher for g in t["per_group_auc"]})
    result = {
        "attack": "loss threshold (Yeom et al. 2018)", "members_per_attack": sample,
        "nonmembers": len(nonmember),
        "teacher_auc": float(np.mean([t["auc"] for t in by_teacher])),
        "teacher_auc_each": [t["auc"] for t in by_teacher],
        "teacher_per_group_auc": {g: float(np.mean([t["per_group_auc"][g] for t in by_teacher
                                                    if g in t["per_group_auc"]])) for g in groups},
        "student_auc": student_auc["auc"], "student_per_group_auc": student_auc["per_group_auc"],
    }
    if lira is not None:
        result["lira"] = _lira(teachers, data, transfer.subset(np.random.default_rng([cfg.seed, 13]).choice(
            unseen, size=min(2 * sample, len(unseen)), replace=False)), *lira)
    (run_dir / AUDIT_FILE).write_text(json.dumps(result, indent=2))
    return result


def _lira(teachers: list[torch.nn.Module], data: FederatedData, nonmember: Split, targets: int, shadows: int) -> dict:
    """Offline LiRA on teachers 0..targets-1 against the φ of teachers targets..targets+shadows-1."""
    shadow_models = teachers[targets:targets + shadows]
    each = []
    for pid in range(targets):
        shard = data.shard(pid)
        x, y = np.concatenate([shard.x, nonmember.x]), np.concatenate([shard.y, nonmember.y])
        scores = lira_offline_scores(logit_confidence(teachers[pid], x, y),
                                     np.stack([logit_confidence(s, x, y) for s in shadow_models]))
        each.append(attack_metrics(scores[:len(shard)], scores[len(shard):]))
    return {"attack": "offline LiRA (Carlini et al. 2022)", "targets": targets, "shadows": shadows,
            "nonmembers": len(nonmember), **{k: float(np.mean([e[k] for e in each])) for k in each[0]},
            "auc_each": [e["auc"] for e in each]}


def main(argv: Sequence[str] | None = None) -> int:
    """``fedkd audit``: the exit status (1 when a run could not be audited)."""
    from fedkd.run_groups import find_run_dirs

    parser = argparse.ArgumentParser(prog="fedkd audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or folders holding them (a study: studies/<name>)")
    parser.add_argument("--sample", type=int, default=SAMPLE, help="members and non-members per attack")
    parser.add_argument("--again", action="store_true", help="audit runs that already have an audit.json")
    parser.add_argument("--lira", metavar="TARGETS,SHADOWS", help="also offline LiRA on TARGETS teachers, "
                                                                  "calibrated on the next SHADOWS (e.g. 8,16)")
    args = parser.parse_args(argv)
    if args.sample < 2:
        parser.error(f"--sample {args.sample}: an attack needs at least 2 members and 2 non-members")
    lira = None
    if args.lira is not None:
        try:
            lira = tuple(int(n) for n in args.lira.split(","))
        except ValueError:
            lira = ()
        if len(lira) != 2 or lira[0] < 1 or lira[1] < 2:
            parser.error(f"--lira {args.lira}: give TARGETS,SHADOWS, at least 1 target and 2 shadows (e.g. 8,16)")
    runs = find_run_dirs(args.runs)
    if not runs:
        print(f"fedkd audit: no run directory under {' '.join(args.runs)}")
        return 1
    failed = 0
    for run_dir in runs:
        if (Path(run_dir) / AUDIT_FILE).is_file() and not args.again:
            continue
        try:
            result = audit_run(Path(run_dir), args.sample, lira)
        except AuditError as err:
            print(f"fedkd audit: {err}")
            failed += 1
            continue
        print(f"fedkd audit: {run_dir}: AUC teachers {result['teacher_auc']:.3f}, student {result['student_auc']:.3f}")
    return 1 if failed else 0
