"""`fedkd audit`: the teachers it reads back from the store (by the job the run wrote) are the ones the clients
trained, so its attack equals the same attack on the clients' own in-memory teachers; a run it cannot attack is
one clear error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import FAST
from sklearn.metrics import roc_auc_score

from clients.app import app as client_app
from fedkd.audit import AUDIT_FILE, AuditError, audit_run
from fedkd.data import federated_data
from fedkd.membership import example_losses
from fedkd.models import build_model
from fedkd.protocol import STATE_PREFIX
from fedkd.results import QUERIED_FILE
from fedkd.teacher_store import TEACHER_STORE_ENV
from fedkd.validation import load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid


def _run(tmp_path: Path, monkeypatch, *extra: str) -> tuple[Path, InProcessGrid, object]:
    store = tmp_path / "store"
    monkeypatch.setenv(TEACHER_STORE_ENV, str(store))  # what `fedkd` sets from teacher_store_dir
    cfg = load_run_config([*FAST, "query=random", "query.per_round=30", f"runs_dir={tmp_path}",
                           f"teacher_store_dir={store}", *extra])
    grid = InProcessGrid(client_app, cfg.federation.num_clients)
    summary = run_federation(grid, cfg)
    return Path(summary["run_dir"]), grid, cfg


def test_the_audit_attacks_the_teachers_the_clients_trained(tmp_path, monkeypatch):
    run_dir, grid, cfg = _run(tmp_path, monkeypatch)
    result = audit_run(run_dir, sample=60)
    assert json.loads((run_dir / AUDIT_FILE).read_text()) == result
    queried = np.load(run_dir / QUERIED_FILE)
    assert len(queried) == 60  # 30 per round, 2 rounds, never the same point twice
    # the same attack by hand on the clients' own teachers (their node state), with the audit's samples
    data = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
    bench = data.benchmark
    rng = np.random.default_rng([cfg.seed, 11])
    unseen = np.setdiff1d(np.arange(len(bench["transfer"])), queried)
    nonmember = bench["transfer"].subset(rng.choice(unseen, size=60, replace=False))

    def auc(model, members) -> float:
        """"Member when the loss is lower", counted pair by pair (Mann-Whitney), ties half."""
        inside, outside = example_losses(model, members.x, members.y), example_losses(model, nonmember.x, nonmember.y)
        wins = (inside[:, None] < outside[None, :]).sum() + 0.5 * (inside[:, None] == outside[None, :]).sum()
        return wins / (len(inside) * len(outside))

    aucs = []
    for pid in range(cfg.federation.num_clients):
        shard = data.shard(pid)
        members = shard.subset(rng.choice(len(shard), size=min(60, len(shard)), replace=False))
        model = build_model(cfg.teacher.arch, bench.input_shape, bench.num_classes, seed=0)
        model.load_state_dict(grid.contexts[pid + 1].state[STATE_PREFIX + "teacher"].to_torch_state_dict())
        aucs.append(auc(model, members))
    assert result["teacher_auc_each"] == pytest.approx(aucs, abs=1e-12)
    assert result["teacher_auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    student = build_model(cfg.student.arch, bench.input_shape, bench.num_classes, seed=0)
    student.load_state_dict(torch.load(run_dir / "student.pt", weights_only=True))
    pool = bench["pool"]
    members = pool.subset(rng.choice(len(pool), size=60, replace=False))
    assert result["student_auc"] == pytest.approx(auc(student, members), abs=1e-12)
    # offline LiRA on teacher 0, calibrated on teachers 1 and 2: its likelihood ratio by hand, from the clients' own
    # teachers, with the audit's non-members
    lira = audit_run(run_dir, sample=60, lira=(1, 2))["lira"]
    out = bench["transfer"].subset(np.random.default_rng([cfg.seed, 13]).choice(unseen, size=120, replace=False))
    shard = data.shard(0)
    x, y = np.concatenate([shard.x, out.x]), np.concatenate([shard.y, out.y])

    def phi(pid):  # log(p_y / (1 - p_y)) of teacher pid on (x, y), in numpy: z_y - log sum_{j != y} exp(z_j)
        model = build_model(cfg.teacher.arch, bench.input_shape, bench.num_classes, seed=0)
        model.load_state_dict(grid.contexts[pid + 1].state[STATE_PREFIX + "teacher"].to_torch_state_dict())
        with torch.no_grad():
            z = model.eval()(torch.from_numpy(x)).numpy().astype(np.float64)
        true = z[np.arange(len(y)), y]
        z[np.arange(len(y)), y] = -np.inf
        top = z.max(1)
        return true - (top + np.log(np.exp(z - top[:, None]).sum(1)))

    shadows = np.stack([phi(1), phi(2)])
    sigma = np.sqrt(shadows.var(0, ddof=1).mean())
    scores = scipy.stats.norm.cdf((phi(0) - shadows.mean(0)) / sigma)
    assert lira["auc"] == pytest.approx(roc_auc_score(np.r_[np.ones(len(shard)), np.zeros(120)], scores), abs=1e-6)
    with pytest.raises(AuditError, match="needs 4 clients"):
        audit_run(run_dir, sample=60, lira=(2, 2))


def test_a_run_the_audit_cannot_attack_is_one_clear_error(tmp_path, monkeypatch):
    run_dir, _, cfg = _run(tmp_path, monkeypatch)
    for entry in Path(cfg.teacher_store_dir).glob("*.teacher"):
        os.remove(entry)  # the teachers are gone from the store
    with pytest.raises(AuditError, match="not in the store"):
        audit_run(run_dir)
    (run_dir / QUERIED_FILE).unlink()
    with pytest.raises(AuditError, match=QUERIED_FILE):
        audit_run(run_dir)
