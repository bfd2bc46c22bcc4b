"""The on-disk teacher store: an entry is what training gives, it is never trusted when corrupt or someone else's,
parallel processes train an entry once, and runs that differ only on the server reuse the clients' teachers."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path

import torch
from conftest import FAST

from clients.app import app as client_app
from fedkd.config import ClientJob, ClientPrivacy
from fedkd.results import read_metrics
from fedkd.teacher_store import TeacherStore, erm_twin, teacher_identity
from fedkd.validation import load_run_config
from server.app import run_federation
from server.inprocess import InProcessGrid

STATE = {"teacher": {"w": torch.arange(6.0).reshape(2, 3)}}
REPORT = {"num_examples": 7, "train_loss": 0.25, "class_counts": [3, 4]}


def test_an_entry_reads_back_as_written_and_a_second_call_does_not_train(tmp_path):
    store = TeacherStore(tmp_path)
    calls = []

    def train():
        calls.append(1)
        return STATE, dict(REPORT)

    first = store.trained("job a", train, dict, dict)
    second = store.trained("job a", train, dict, dict)
    assert calls == [1] and first[2] is False and second[2] is True
    assert torch.equal(second[0]["teacher"]["w"], STATE["teacher"]["w"]) and second[1] == REPORT
    store.trained("job b", train, dict, dict)
    assert calls == [1, 1]  # another identity is another entry


def test_a_corrupt_or_foreign_entry_is_trained_again_and_replaced(tmp_path):
    store = TeacherStore(tmp_path)
    store.write("job a", STATE, REPORT)
    path = store.path("job a")
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF  # one flipped bit inside the tensor data: torch.load alone would not notice
    path.write_bytes(bytes(blob))
    assert store.read("job a") is None
    path.write_bytes(path.read_bytes()[:100])  # cut short
    assert store.read("job a") is None
    store.write("job b", STATE, REPORT)
    store.path("job b").replace(path)  # job b's entry under job a's name: its identity text differs
    assert store.read("job a") is None
    retrained = store.trained("job a", lambda: (STATE, {"num_examples": 8}), dict, dict)
    assert retrained[2] is False and store.read("job a")[1] == {"num_examples": 8}


def _slow_train(root: str, identity: str, log: str) -> None:
    def train():
        with open(log, "a") as f:
            f.write("trained\n")
        time.sleep(1.0)
        return STATE, dict(REPORT)

    TeacherStore(root).trained(identity, train, dict, dict)


def test_parallel_processes_train_an_entry_once(tmp_path):
    log = tmp_path / "log"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_slow_train, args=(str(tmp_path / "store"), "job a", str(log)))
               for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert log.read_text() == "trained\n"


def test_the_identity_names_what_training_depends_on():
    cfg = load_run_config([*FAST, "teacher=erm"])
    job = cfg.client_job()
    base = teacher_identity(job, 0, 1)
    assert teacher_identity(job, 1, 1) != base and teacher_identity(job, 0, 2) != base
    assert teacher_identity(dataclasses.replace(job, seed=job.seed + 1), 0, 1) != base
    assert teacher_identity(dataclasses.replace(job, threads=job.threads + 1), 0, 1) != base
    # erm keeps its base anyway: asking for it changes nothing the client trains
    assert teacher_identity(dataclasses.replace(job, erm_base=True), 0, 1) == base
    assert isinstance(job, ClientJob)


def test_with_a_reserve_the_labeled_budget_names_only_the_teachers_that_train_on_it():
    def identities(teacher: str, reserve: int) -> set[str]:
        return {teacher_identity(load_run_config([*FAST, f"teacher={teacher}", f"dataset.val_per_class={v}",
                                                  f"dataset.val_reserve_per_class={reserve}"]).client_job(), 0, 1)
                for v in (2, 20)}

    assert len(identities("erm", 20)) == 1  # the shards do not move: the ERM teachers are shared across budgets
    assert len(identities("erm", 0)) == 2  # without a reserve the budget moves the pool, and so the shards
    assert len(identities("dfr", 20)) == 2  # DFR's head trains on the labeled split itself


def _run(overrides: list[str], store: Path | None, tmp_path: Path, monkeypatch) -> dict:
    if store is None:
        monkeypatch.delenv("FEDKD_TEACHER_STORE_DIR", raising=False)
    else:
        monkeypatch.setenv("FEDKD_TEACHER_STORE_DIR", str(store))
    cfg = load_run_config([*FAST, *overrides, f"runs_dir={tmp_path / 'runs'}"])
    return run_federation(InProcessGrid(client_app, cfg.federation.num_clients), cfg)


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in records]


def test_runs_that_differ_on_the_server_reuse_teachers_and_answers_and_get_the_same_bits(tmp_path, monkeypatch):
    store = tmp_path / "store"
    alone = _run(["aggregator=vote"], None, tmp_path, monkeypatch)
    _run(["aggregator=mean"], store, tmp_path, monkeypatch)
    assert len(list(store.glob("*.teacher"))) == 3 * 2  # 3 clients x 2 rounds
    assert len(list(store.glob("*.answer"))) >= 3 * 2  # at least one query per client and round
    written = {p: p.stat().st_mtime_ns for p in store.iterdir() if not p.name.endswith(".lock")}
    reused = _run(["aggregator=vote"], store, tmp_path, monkeypatch)
    # nothing trained or answered again: the same queries reached the same stored teachers
    assert {p: p.stat().st_mtime_ns for p in store.iterdir() if not p.name.endswith(".lock")} == written
    assert _strip(read_metrics(reused["run_dir"])) == _strip(read_metrics(alone["run_dir"]))
    assert reused["test"] == alone["test"]


def test_dfr_teachers_on_public_data_share_their_erm_bases_and_get_the_same_bits(tmp_path, monkeypatch):
    """A DFR teacher's base is its ERM twin's teacher (``erm_twin``): with a store, DFR trains the twin once,
    an ERM run then trains nothing, and DFR at another labeled budget refits only the heads; every run gives the
    bits it gives without a store."""
    store = tmp_path / "store"
    reserve = "dataset.val_reserve_per_class=20"

    def teachers() -> set[Path]:
        return set(store.glob("*.teacher"))

    def same(a: dict, b: dict) -> bool:
        return _strip(read_metrics(a["run_dir"])) == _strip(read_metrics(b["run_dir"])) and a["test"] == b["test"]

    dfr = ["teacher=dfr", reserve, "dataset.val_per_class=20"]
    assert same(_run(dfr, store, tmp_path, monkeypatch), _run(dfr, None, tmp_path, monkeypatch))
    first = teachers()
    assert len(first) == 2 * 3 * 2  # a DFR entry and its ERM twin's, for 3 clients x 2 rounds
    erm = ["teacher=erm", reserve, "dataset.val_per_class=20"]
    assert same(_run(erm, store, tmp_path, monkeypatch), _run(erm, None, tmp_path, monkeypatch))
    assert teachers() == first  # the ERM run found every teacher it trains: DFR's bases
    fewer_labels = ["teacher=dfr", reserve, "dataset.val_per_class=5"]
    _run(fewer_labels, store, tmp_path, monkeypatch)
    assert len(teachers() - first) == 3 * 2  # only the refitted teachers are new
    assert erm_twin(load_run_config([*FAST, *fewer_labels]).client_job()) is not None
    local, erm = (load_run_config([*FAST, *o]).client_job() for o in (["teacher=dfr", "teacher.dfr_data=local"], erm))
    dp_sgd = dataclasses.replace(load_run_config([*FAST, *dfr]).client_job(),
                                 privacy=ClientPrivacy(dp_sgd=True, withhold_statistics=True))
    assert erm_twin(local) is None and erm_twin(erm) is None and erm_twin(dp_sgd) is None
