"""The round loop of federated distillation. It talks to clients only through ``grid.send_and_receive``,
so the same loop runs on Flower's engines and on the in-process grid of the tests and benchmarks.

The loop only orders the round; each part of the server's state lives with the collaborator that changes it
(``Federation``, ``PrivacySession``, ``QuerySession``, ``StudentTraining``, ``Evaluation``), and the checkpoint
is the state of every part listed in ``FederatedDistillation._parts``."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Protocol

import numpy as np
from flwr.serverapp import Grid

from fedkd import protocol
from fedkd.aggregators import AGGREGATORS
from fedkd.checkpoint import SERVER_CHECKPOINT, CheckpointError, atomic_save, load
from fedkd.config import RunConfig
from fedkd.data import federated_data
from fedkd.device import resolve_device
from fedkd.display import RunDisplay
from fedkd.results import RunDirectory
from fedkd.trackers import Tracker, make_tracker
from fedkd.validation import client_job
from server.evaluation import Evaluation
from server.federation import NODE_WAIT_SECONDS, Federation, FederationError
from server.privacy_session import PrivacySession
from server.query_session import QuerySession
from server.student import StudentTraining

__all__ = ["CHECKPOINT_FORMAT", "NODE_WAIT_SECONDS", "FederatedDistillation", "FederationError"]

CHECKPOINT_FORMAT = 2  # 2: one section per collaborator, under "parts"


class Stateful(Protocol):
    """A collaborator whose state the checkpoint carries."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class FederatedDistillation:
    """Train teachers on the clients, aggregate their soft labels on the transfer pool, distill one student.

    A client that fails (error reply, or a reply that breaks the wire contract) or does not answer within
    ``federation.round_timeout`` is dropped for the rest of the run and recorded; a round goes on with the clients
    that answered while at least ``federation.min_clients`` did, and the run stops with a ``FederationError``
    otherwise. After every round the whole server state is checkpointed, so ``resume=True`` continues a killed run
    exactly."""

    def __init__(self, cfg: RunConfig, run_dir: RunDirectory, display: RunDisplay, resume: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        self.run_dir = run_dir
        self.display = display
        self.aggregator = AGGREGATORS[cfg.aggregator.name](cfg.aggregator)
        federated = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
        self.data = federated.benchmark
        self.privacy = PrivacySession(cfg, len(self.data["transfer"]), self.data.num_classes,
                                      [len(federated.shard(i)) for i in range(cfg.federation.num_clients)],
                                      self.aggregator)
        self.job = client_job(cfg, self.privacy.plan)
        self.student = StudentTraining(cfg, self.data, resolve_device(cfg.device))
        self.federation = Federation(cfg, display, self.checkpoint_path, run_dir.path)
        self.queries = QuerySession(cfg, self.data, self.job, self.aggregator, self.federation, self.privacy,
                                    self.student.model, self.student.device)
        self.evaluation = Evaluation(cfg, self.data, run_dir, display, self.student.model, self.privacy)
        self.run_key = uuid.uuid4().hex  # names the clients' on-disk states of this run (kept on resume)
        self.resumed_after: list[int] = []
        self.earlier_wall_seconds = 0.0
        self._last_record: dict | None = None
        self.tracker: Tracker | None = None  # logger=tensorboard|mlflow, while the rounds run

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir.path / SERVER_CHECKPOINT

    def _parts(self) -> dict[str, Stateful]:
        """Every collaborator whose state the checkpoint holds, under its key: save and restore both read this."""
        return {"student": self.student, "federation": self.federation, "privacy": self.privacy,
                "queries": self.queries, "evaluation": self.evaluation}

    def run(self, grid: Grid) -> dict:
        """Run (or, with ``resume``, continue) every round on ``grid``, then the baselines; returns the summary."""
        start = time.perf_counter()
        first_round = self._restore() + 1 if self.resume else 1
        self.federation.wait_for_nodes(grid)
        record = self._last_record if self.resume else None
        self.tracker = make_tracker(self.cfg.logger, self.run_dir.path, self.cfg.to_dict())
        self.run_dir.write_client_job(self.job.to_yaml())
        try:
            for server_round in range(first_round, self.cfg.federation.num_rounds + 1):
                record = self._round(grid, server_round)
                self._save_checkpoint(server_round, record, time.perf_counter() - start)
        finally:
            if self.tracker is not None:
                self.tracker.close()
        baselines = self.evaluation.baselines(grid, self.cfg.federation.num_rounds, self.queries)
        self.run_dir.write_queried(np.flatnonzero(self.queries.pool.queried))
        run_columns = {"dropped_clients": self.federation.dropped, "resumed_after_rounds": self.resumed_after,
                       **self.privacy.columns(final=True),
                       "communication": self.federation.communication_totals(self.queries.pool.num_queries)}
        return self.evaluation.finish(record, baselines, run_columns,
                                      self.earlier_wall_seconds + time.perf_counter() - start)

    def _round(self, grid: Grid, server_round: int) -> dict:
        """Train the teachers, query them, distill and evaluate; returns the round's metrics line, once written."""
        round_start = time.perf_counter()
        self.federation.start_round()
        replies = self.federation.ask(grid, protocol.TRAIN_TEACHER,
                                      protocol.train_request(self.job, server_round, self.run_key),
                                      server_round, "training teachers")
        self.federation.take_reports(replies, server_round, self.data.num_classes, self.data.num_groups)
        teacher_error = self._ask_val(grid, server_round)
        self.queries.ask_labeled(grid, server_round)
        self.privacy.observe_reports(self.federation.reports.values())
        query_record = self.queries.new_points(grid, server_round, teacher_error)

        self.display.phase(server_round, "aggregating and distilling")
        clients = self.federation.clients()
        indices, targets = self.queries.targets(clients, server_round)
        loss = self.student.distill(server_round, self.data["transfer"].x, indices, targets)

        self.display.phase(server_round, "evaluating")
        model, student_choice = self.evaluation.round_model()
        test_report, _ = self.evaluation.evaluate(model)
        self.evaluation.keep_if_best(model, server_round)
        record = {
            "round": server_round,
            "test": test_report,
            **self.evaluation.validation_columns(model),
            "student_model": student_choice,
            "distill_loss": loss,
            "aggregator": self.cfg.aggregator.name,
            "aggregator_stats": self.aggregator.round_stats(),
            "query": query_record,
            **self.privacy.columns(),
            "communication": self.federation.communication(self.student.model),
            "participants": clients,
            "failed_clients": self.federation.round_failures,
            **self.federation.teacher_columns(clients),
            "wall_seconds": time.perf_counter() - round_start,
        }
        self.run_dir.append_metrics(record)
        if self.tracker is not None:
            self.tracker.log_round(server_round, record)
        self.display.round_done(record)
        self.federation.count(record["communication"], len(clients))
        return record

    def _ask_val(self, grid: Grid, server_round: int) -> float | None:
        """Ask the teachers about the labeled server split when the student objective or the query strategy
        needs it; returns the teachers' error there (None when not asked)."""
        if not (self.student.needs_val_softlabels or self.queries.needs_teacher_error):
            return None
        val_logits = self.queries.split_logits(grid, server_round, "val")
        teacher_error = self.queries.teacher_error(val_logits)
        if self.student.needs_val_softlabels:
            self.student.observe_val(val_logits)
        return teacher_error

    def _save_checkpoint(self, server_round: int, record: dict, wall_seconds: float) -> None:
        """Everything the next round needs, written atomically after the round's metrics line."""
        atomic_save({
            "format": CHECKPOINT_FORMAT,
            "round": server_round,
            "config": self.cfg.to_dict(),
            "run_key": self.run_key,
            "parts": {name: part.state_dict() for name, part in self._parts().items()},
            "resumed_after": self.resumed_after,
            "last_record": record,
            "wall_seconds": self.earlier_wall_seconds + wall_seconds,
        }, self.checkpoint_path)

    def _restore(self) -> int:
        """Load the last checkpoint of this run directory; returns its round. Metrics lines of later rounds (a
        round that finished after the checkpoint was read, or a kill between the two writes) are set aside in
        ``metrics.discarded.jsonl``, not deleted."""
        state = load(self.checkpoint_path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{self.checkpoint_path} has format {state.get('format')}, this fedkd reads "
                                  f"{CHECKPOINT_FORMAT}")
        if state["config"] != self.cfg.to_dict():
            raise CheckpointError(f"{self.checkpoint_path} was written by a run with another config than "
                                  f"{self.run_dir.path / 'config.yaml'}")
        self.run_key = state["run_key"]
        for name, part in self._parts().items():
            part.load_state_dict(state["parts"][name])
        self.resumed_after = [*state["resumed_after"], state["round"]]
        self._last_record = state["last_record"]
        self.earlier_wall_seconds = state["wall_seconds"]
        self.run_dir.set_aside_metrics_after(state["round"])
        self.display.resume_at(state["round"])
        return state["round"]
