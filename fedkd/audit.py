"""``fedkd audit <runs or study folder>``: membership inference against a finished run's teachers and student, by
an auditor with the simulation's privileged access: the clients' trained teachers from the teacher store (the run
must have had ``teacher_store_dir``), their shards rebuilt from the config. No client would hand these over in a
deployment; the audit measures what an attacker holding the models could learn.

The attack is the loss-threshold one (Yeom et al. 2018, ``fedkd.membership.membership_auc``): members are a sample
of a client's shard (each teacher) or of the pooled client data (the student); non-members are transfer points no
teacher was asked about (``queried.npy``), so neither the teachers nor the student saw them. AUC 0.5: nothing the
attack can see. Written to ``<run>/audit.json``; `fedkd report` shows it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml

from fedkd.config import RunConfig
from fedkd.data import Split, federated_data
from fedkd.membership import example_losses, membership_auc
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


def audit_run(run_dir: Path, sample: int = SAMPLE) -> dict:
    """The attack's AUC on every teacher (their mean, and per group) and on the student; written to audit.json."""
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
    store = TeacherStore(cfg.teacher_store_dir)
    job = parse_client_job((run_dir / CLIENT_JOB_FILE).read_text())
    data = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
    bench = data.benchmark
    transfer = bench["transfer"]
    unseen = np.setdiff1d(np.arange(len(transfer)), np.load(run_dir / QUERIED_FILE))
    if len(unseen) < MIN_NONMEMBERS:
        raise AuditError(f"{run_dir}: only {len(unseen)} transfer points were never queried: too few non-members "
                         f"(at least {MIN_NONMEMBERS}; a query budget leaves them)")
    rng = np.random.default_rng([cfg.seed, 11])
    nonmember = transfer.subset(rng.choice(unseen, size=min(sample, len(unseen)), replace=False))

    def attack(model: torch.nn.Module, members: Split) -> dict:
        return membership_auc(example_losses(model, members.x, members.y),
                              example_losses(model, nonmember.x, nonmember.y), members.g, nonmember.g,
                              bench.group_names)

    teachers = []
    for pid in range(cfg.federation.num_clients):
        entry = store.read(teacher_identity(job, pid, cfg.federation.num_rounds))
        if entry is None:
            raise AuditError(f"{run_dir}: client {pid}'s last teacher is not in the store {cfg.teacher_store_dir} "
                             "(a relative store is read from the current folder: run the audit where the run ran; "
                             "or the teachers were trained by other code, or the store was cleared)")
        model = build_model(cfg.teacher.arch, bench.input_shape, bench.num_classes, seed=0)
        model.load_state_dict(entry[0]["teacher"])
        teachers.append(attack(model, _sample(data.shard(pid), rng, sample)))
    student = build_model(cfg.student.arch, bench.input_shape, bench.num_classes, seed=0)
    student.load_state_dict(torch.load(run_dir / STUDENT_FILE, weights_only=True))
    student_auc = attack(student, _sample(bench["pool"], rng, sample))
    groups = sorted({g for t in teachers for g in t["per_group_auc"]})
    result = {
        "attack": "loss threshold (Yeom et al. 2018)", "members_per_attack": sample,
        "nonmembers": len(nonmember),
        "teacher_auc": float(np.mean([t["auc"] for t in teachers])),
        "teacher_auc_each": [t["auc"] for t in teachers],
        "teacher_per_group_auc": {g: float(np.mean([t["per_group_auc"][g] for t in teachers
                                                    if g in t["per_group_auc"]])) for g in groups},
        "student_auc": student_auc["auc"], "student_per_group_auc": student_auc["per_group_auc"],
    }
    (run_dir / AUDIT_FILE).write_text(json.dumps(result, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``fedkd audit``: the exit status (1 when a run could not be audited)."""
    from fedkd.run_groups import find_run_dirs

    parser = argparse.ArgumentParser(prog="fedkd audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or folders holding them (a study: studies/<name>)")
    parser.add_argument("--sample", type=int, default=SAMPLE, help="members and non-members per attack")
    parser.add_argument("--again", action="store_true", help="audit runs that already have an audit.json")
    args = parser.parse_args(argv)
    if args.sample < 2:
        parser.error(f"--sample {args.sample}: an attack needs at least 2 members and 2 non-members")
    runs = find_run_dirs(args.runs)
    if not runs:
        print(f"fedkd audit: no run directory under {' '.join(args.runs)}")
        return 1
    failed = 0
    for run_dir in runs:
        if (Path(run_dir) / AUDIT_FILE).is_file() and not args.again:
            continue
        try:
            result = audit_run(Path(run_dir), args.sample)
        except AuditError as err:
            print(f"fedkd audit: {err}")
            failed += 1
            continue
        print(f"fedkd audit: {run_dir}: AUC teachers {result['teacher_auc']:.3f}, student {result['student_auc']:.3f}")
    return 1 if failed else 0
