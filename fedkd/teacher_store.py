"""Trained teachers shared across runs, processes and invocations: a study's jobs that differ only on the server
(aggregator, student, query) train each client's teacher once.

An entry is one client's state after one round (teacher, ERM base, objective state) and its train report, stored
under the digest of what that training depends on: the client job's training key, the partition, the round, and
the code that trains (the sources of ``fedkd`` and ``clients``, and torch's version). Client training is seeded by
(seed, partition, round) and runs on the job's thread count, so a stored entry is what training again would give
on the same machine, bit for bit.

An entry is written to a private temporary file and renamed into place; it carries the SHA-256 of its payload and
its full identity text, and is never trusted when either does not match (it is trained again and replaced). A
``filelock`` per entry lets parallel jobs (joblib workers, several ``fedkd`` processes) wait for the one that
trains it instead of training it twice. A stored teacher's answers to soft-label queries are kept the same way
(they are a function of the teacher and the request), so a job whose teachers come from the store skips their
inference too. A DFR teacher on public data stores its ERM base as its ERM twin's entry (``erm_twin``), so the
base is trained once for ERM and DFR teachers and for DFR at every labeled budget.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from fedkd.config import ClientJob
from fedkd.teachers import TEACHER_OBJECTIVES, as_objective

TEACHER_STORE_ENV = "FEDKD_TEACHER_STORE_DIR"
TEACHER_STORE_NODE_KEY = "teacher-store-dir"
ENTRY_SUFFIX = ".teacher"
ANSWER_SUFFIX = ".answer"
CODE_PACKAGES = ("fedkd", "clients")


@functools.cache
def code_digest() -> str:
    """SHA-256 over the Python sources of the packages whose code trains a teacher, and torch's version."""
    digest = hashlib.sha256(torch.__version__.encode())
    for package in CODE_PACKAGES:
        root = Path(__import__(package).__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def training_job(job: ClientJob) -> ClientJob:
    """The job as far as the client's training goes: whether it keeps an ERM base matters only to the objectives
    that keep one on request (erm and dfr keep theirs anyway); the size of the server's labeled split only to the
    objectives that train on it, or where no reserve keeps it from moving the clients' shards."""
    objective = TEACHER_OBJECTIVES[job.teacher.objective]
    if not objective.base_on_request:
        job = dataclasses.replace(job, erm_base=False)
    reserve = job.dataset.val_reserve_per_class
    if reserve and not objective.uses_labeled_split(job.teacher):
        job = dataclasses.replace(job, dataset=dataclasses.replace(job.dataset, val_per_class=reserve))
    return job


def erm_twin(job: ClientJob) -> ClientJob | None:
    """The ERM job whose teacher is, round by round, this job's ERM base bit for bit, or None. An objective that
    refits an ERM base (a DFR teacher on public data) trains its base as ERM trains its teacher (the same shard,
    initialisation, loss, schedule and data order: the head's refit draws from the round's generator only after)
    and refits only the head, so a study that runs both, or DFR at several labeled budgets, trains each base once.
    Not under DP-SGD or withheld statistics, where the client's state carries more than the weights."""
    objective = TEACHER_OBJECTIVES[job.teacher.objective]
    if not objective.refits_an_erm_base(job.teacher) or job.privacy.dp_sgd or job.privacy.withhold_statistics:
        return None
    return dataclasses.replace(job, teacher=as_objective(job.teacher, "erm"), erm_base=False)


def teacher_identity(job: ClientJob, partition_id: int, server_round: int) -> str:
    """The text that names one client's training."""
    job = training_job(job)
    return (f"code: {code_digest()}\npartition: {partition_id}\nround: {server_round}\n"
            f"job:\n{job.training_key()}")


def answer_identity(teacher: str, job: ClientJob, split: str, server_round: int, with_base: bool,
                    indices: np.ndarray) -> str:
    """The text that names one answer of a stored teacher: the teacher's identity and the request (points, split,
    round, base; local noise is seeded by seed, partition and round). Compression acts on the reply, after."""
    job = dataclasses.replace(job, erm_base=False)
    points = hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()
    return (f"{teacher}\nanswer: split {split}, round {server_round}, base {with_base}, points {points}\n"
            f"query job:\n{job.to_yaml()}")


class TeacherStore:
    """Entries ``<sha256 of the identity>.teacher`` (and ``.answer``) under ``root``, a folder several processes may
    share."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_node(cls, node_config: dict) -> TeacherStore | None:
        """The node's store: node config ``teacher-store-dir`` (a deployment) or $FEDKD_TEACHER_STORE_DIR (what
        ``fedkd`` sets from the run's ``teacher_store_dir``); None: no sharing."""
        root = node_config.get(TEACHER_STORE_NODE_KEY) or os.environ.get(TEACHER_STORE_ENV)
        return cls(str(root)) if root else None

    def path(self, identity: str, suffix: str = ENTRY_SUFFIX) -> Path:
        return self.root / (hashlib.sha256(identity.encode()).hexdigest() + suffix)

    def read(self, identity: str, suffix: str = ENTRY_SUFFIX) -> tuple[dict, dict] | None:
        """The stored (state, report) of ``identity``; None when absent, unreadable, corrupt or someone else's."""
        try:
            blob = self.path(identity, suffix).read_bytes()
        except OSError:
            return None
        checksum, payload = blob[:32], blob[32:]
        if hashlib.sha256(payload).digest() != checksum:
            return None
        try:
            entry = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an entry this code cannot read is a missing one
            return None
        if not isinstance(entry, dict) or entry.get("identity") != identity:
            return None
        return entry["state"], entry["report"]

    def write(self, identity: str, state: dict, report: dict, suffix: str = ENTRY_SUFFIX) -> None:
        """Write the entry privately beside its final name, then rename it into place."""
        buffer = io.BytesIO()
        torch.save({"identity": identity, "state": state, "report": report}, buffer)
        payload = buffer.getvalue()
        path = self.path(identity, suffix)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(hashlib.sha256(payload).digest() + payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def trained(self, identity: str, train: Callable[[], tuple[dict, Any]], encode: Callable[[Any], dict],
                decode: Callable[[dict], Any], suffix: str = ENTRY_SUFFIX) -> tuple[dict, Any, bool]:
        """(state, report, whether it came from the store): the stored entry of ``identity``, or ``train()``'s
        result, stored. Under the entry's lock, so that a parallel job waits for this training instead of
        repeating it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path(identity, suffix)) + ".lock"):
            stored = self.read(identity, suffix)
            if stored is not None:
                return stored[0], decode(stored[1]), True
            state, report = train()
            self.write(identity, state, encode(report), suffix)
            return state, report, False

    def answers(self, identity: str, compute: Callable[[], tuple[np.ndarray, np.ndarray | None]]
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """A stored teacher's logits (and its base's) on the points ``identity`` names, computed once."""
        def answer() -> tuple[dict, dict]:
            logits, base = compute()
            arrays = {"logits": torch.from_numpy(logits)}
            if base is not None:
                arrays["base"] = torch.from_numpy(base)
            return arrays, {}

        arrays, _, _ = self.trained(identity, answer, dict, dict, ANSWER_SUFFIX)
        return arrays["logits"].numpy(), arrays["base"].numpy() if "base" in arrays else None
