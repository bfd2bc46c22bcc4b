"""Which transfer points the teachers are asked about: the query strategy and its generator, the pool of the soft
labels they answered with, and the requests that ask for them. It hands the round loop the targets the student
distills on, from the pool or, with a server-side privacy mechanism, from what was released."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import RecordDict
from flwr.serverapp import Grid

from fedkd import protocol
from fedkd.aggregators import Aggregator
from fedkd.checkpoint import restore_rng, rng_state
from fedkd.compression import COMPRESSIONS
from fedkd.config import ClientJob, RunConfig
from fedkd.data import Benchmark
from fedkd.privacy import ReleasedTargets
from fedkd.query import QUERY_STRATEGIES, QueryContext, QueryStrategy, SoftLabelPool
from fedkd.soft_labels import AggregationInputs
from fedkd.training import predict_logits
from server.federation import Federation
from server.privacy_session import PrivacySession


@dataclass(eq=False, repr=False)
class QuerySession:
    """``query=`` for one run: asks the clients of ``federation`` about transfer points under the query budget and
    the privacy session's cap, and keeps their answers in the soft-label pool."""

    cfg: RunConfig
    data: Benchmark
    job: ClientJob
    aggregator: Aggregator
    federation: Federation
    privacy: PrivacySession
    student: torch.nn.Module
    device: torch.device
    strategy: QueryStrategy = field(init=False)
    generator: np.random.Generator = field(init=False)
    pool: SoftLabelPool = field(init=False)
    labeled: tuple[torch.Tensor, list[int]] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.strategy = QUERY_STRATEGIES[self.cfg.query.name](self.cfg.query)
        self.generator = np.random.default_rng([self.cfg.seed, 4])
        self.pool = SoftLabelPool(len(self.data["transfer"]), self.cfg.federation.num_clients)

    def state_dict(self) -> dict:
        return {"pool": self.pool.state_dict(), "rng": rng_state(self.generator)}

    def load_state_dict(self, state: dict) -> None:
        self.pool.load_state_dict(state["pool"])
        restore_rng(self.generator, state["rng"])

    @property
    def needs_teacher_error(self) -> bool:
        """Whether the strategy wants the teachers' error on the labeled server split every round."""
        return self.strategy.needs_teacher_error

    def soft_labels(self, grid: Grid, server_round: int, indices: np.ndarray, with_base: bool,
                    split: str = "transfer") -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """The logits [M, n, C] on ``indices`` of ``split`` of every teacher that answered (ordered by partition
        id), its ERM base's when ``with_base``, and the answering partition ids."""
        query, phase = self.cfg.query, f"querying soft labels ({split})"
        replies = self.federation.ask(grid, protocol.QUERY_SOFTLABELS,
                                      protocol.query_request(self.job, server_round, indices, with_base, split,
                                                             query.compression, query.top_k),
                                      server_round, phase)
        compression = COMPRESSIONS[query.compression](query.top_k)

        def parse(content: RecordDict) -> protocol.SoftLabelReply:
            return protocol.parse_query_reply(content, len(indices), self.data.num_classes, with_base, compression,
                                              self.cfg.federation.num_clients)

        answers = sorted((a for _, a in self.federation.accept(replies, parse, server_round, phase)),
                         key=lambda a: a.partition_id)
        logits = torch.from_numpy(np.stack([a.logits for a in answers]))
        base = torch.from_numpy(np.stack([a.base_logits for a in answers])) if with_base else None
        return logits, base, [a.partition_id for a in answers]

    def split_logits(self, grid: Grid, server_round: int, split: str) -> torch.Tensor:
        """Every teacher's logits on the whole of ``split`` (val, test), no base."""
        return self.soft_labels(grid, server_round, np.arange(len(self.data[split])), False, split)[0]

    def ask_labeled(self, grid: Grid, server_round: int) -> None:
        """When the aggregator reads them, ask every teacher about the whole labeled server split for this
        round's aggregation (the teachers were retrained this round, so last round's answers are stale)."""
        if self.aggregator.needs_labeled_answers:
            logits, _, clients = self.soft_labels(grid, server_round, np.arange(len(self.data["val"])), False, "val")
            self.labeled = logits, clients

    def _labeled_inputs(self, clients: list[int]) -> dict:
        """The labeled split's answers of ``clients``, in their order, with the split's labels and groups."""
        if not self.aggregator.needs_labeled_answers:
            return {}
        logits, answered = self.labeled
        missing = sorted(set(clients) - set(answered))
        if missing:
            raise RuntimeError(f"clients {missing} gave soft labels on the transfer pool but none on the labeled "
                               f"split this round; aggregator={self.cfg.aggregator.name} needs both")
        rows = [answered.index(c) for c in clients]
        val = self.data["val"]
        return {"labeled_logits": logits[rows], "labeled_y": val.y, "labeled_g": val.g}

    def teacher_error(self, val_logits: torch.Tensor) -> float:
        """Error rate of the teachers' ensemble (mean probability) on the server's labeled split."""
        pred = torch.softmax(val_logits, -1).mean(0).argmax(1).numpy()
        return float(np.mean(pred != self.data["val"].y))

    def new_points(self, grid: Grid, server_round: int, teacher_error: float | None) -> dict:
        """Pick this round's transfer points with the query strategy under the budget (and, with a privacy cap,
        under what ε has left), ask every client about them and add the answers to the pool (or, with a
        server-side privacy mechanism, release noisy targets for them); returns what was done, for metrics.jsonl."""
        cfg = self.cfg.query
        candidates = self.pool.candidates(cfg.asks_again())
        wanted = cfg.round_budget(self.pool.pool_size, self.pool.num_queries, len(candidates))
        budget = self.privacy.cap_budget(wanted)
        chosen = np.zeros(0, dtype=np.int64)
        release_stats = {}
        if budget > 0:
            context = None
            if self.strategy.needs_student:
                student_logits = predict_logits(self.student, self.data["transfer"].x[candidates])
                context = QueryContext(student_logits=student_logits, teacher_error=teacher_error)
            chosen = self.strategy.select(candidates, budget, context, self.generator)
            logits, base, clients = self.soft_labels(grid, server_round, chosen, self.aggregator.needs_base)
            self.pool.add(chosen, logits, base, clients)
            if self.privacy.server_release:
                release_stats = self.privacy.release(
                    chosen, self.aggregation_inputs(chosen, logits, base, clients, server_round), self.aggregator,
                    self.student,
                    torch.from_numpy(self.data["transfer"].x[chosen]).to(self.device))
            else:
                self.privacy.account_client_noise(len(chosen))
        return {"strategy": cfg.name, "budget": budget, "num_new": int(len(chosen)),
                "pool_size": int(self.pool.queried.sum()), "soft_labels_queried": self.pool.num_queries,
                "teacher_error_val": teacher_error, "stopped_by_privacy_budget": budget < wanted,
                **release_stats, **self.strategy.last_stats}

    def targets(self, clients: list[int], server_round: int) -> tuple[np.ndarray, Aggregator | ReleasedTargets]:
        """The transfer points the student distills on this round and what gives their targets: the released
        targets of a server-side mechanism, or the aggregator prepared on the pool's answers of ``clients``."""
        if self.privacy.server_release:
            return self.privacy.released.indices, self.privacy.released
        indices, teacher_logits, base_logits = self.pool.answers(clients)
        self.aggregator.prepare(self.aggregation_inputs(indices, teacher_logits, base_logits, clients, server_round))
        return indices, self.aggregator

    def aggregation_inputs(self, indices: np.ndarray, teacher_logits: torch.Tensor, base_logits: torch.Tensor | None,
                           clients: list[int], server_round: int) -> AggregationInputs:
        """What an aggregator or a release needs about the answers of ``clients`` on ``indices``."""
        return AggregationInputs(
            teacher_logits=teacher_logits,
            temperature=self.cfg.student.temperature,
            class_counts=self.federation.class_counts(clients),
            base_logits=base_logits,
            groups=self.data["transfer"].g[indices],
            labels=self.data["transfer"].y[indices],
            group_names=self.data.group_names,
            seed=self.cfg.seed,
            clients=tuple(clients),
            round=server_round,
            **self._labeled_inputs(clients),
        )
