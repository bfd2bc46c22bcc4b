"""The round loop of federated distillation. It talks to clients only through ``grid.send_and_receive``,
so the same loop runs on Flower's engines and on the in-process grid of the tests and benchmarks."""

from __future__ import annotations

import copy
import time
import uuid

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp import Grid

from fedkd import protocol
from fedkd.accounting import RdpLedger
from fedkd.aggregators import AGGREGATORS
from fedkd.baselines import centralized_reports, ensemble_report, one_hot_report
from fedkd.checkpoint import SERVER_CHECKPOINT, CheckpointError, atomic_save, load, restore_rng, rng_state
from fedkd.compression import COMPRESSIONS
from fedkd.config import RunConfig
from fedkd.data import federated_data
from fedkd.device import cpu_state, resolve_device
from fedkd.dfr import held_out_split, retrain_last_layer
from fedkd.display import RunDisplay
from fedkd.distill import STUDENT_OBJECTIVES, distill_student
from fedkd.metrics import group_report, worst_group_accuracy
from fedkd.models import build_model
from fedkd.privacy import PRIVACY_MECHANISMS, ReleasedTargets, ServerRelease
from fedkd.query import QUERY_STRATEGIES, QueryContext, SoftLabelPool
from fedkd.results import RunDirectory
from fedkd.soft_labels import AggregationInputs
from fedkd.training import predict_logits, sgd
from fedkd.validation import client_job

NODE_WAIT_SECONDS = 120.0


class FederationError(RuntimeError):
    """Clients did not answer as the round needs (too few replies, error replies, malformed content)."""


CHECKPOINT_FORMAT = 1


class FederatedDistillation:
    """Train teachers on the clients, aggregate their soft labels on the transfer pool, distill one student.

    A client that fails (error reply) or does not answer within ``federation.round_timeout`` is dropped for the
    rest of the run and recorded; a round goes on with the clients that answered while at least
    ``federation.min_clients`` did, and the run stops with a ``FederationError`` otherwise. After every round the
    whole server state is checkpointed, so ``resume=True`` continues a killed run exactly."""

    def __init__(self, cfg: RunConfig, run_dir: RunDirectory, display: RunDisplay, resume: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        self.run_dir = run_dir
        self.display = display
        self.aggregator = AGGREGATORS[cfg.aggregator.name](cfg.aggregator)
        federated = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
        self.data = federated.benchmark
        self.privacy = PRIVACY_MECHANISMS[cfg.privacy.name](cfg.privacy)
        self.privacy_plan = self.privacy.plan(cfg, len(self.data["transfer"]),
                                              [len(federated.shard(i)) for i in range(cfg.federation.num_clients)],
                                              type(self.aggregator))
        self.ledger = RdpLedger(cfg.privacy.delta)
        self.released = ReleasedTargets(len(self.data["transfer"]), self.data.num_classes)
        self.noise_generator = torch.Generator().manual_seed(cfg.seed * 7919 + 5)
        self.privacy_rng = np.random.default_rng([cfg.seed, 5])
        self.client_epsilon = 0.0
        self.job = client_job(cfg, self.privacy_plan)
        self.device = resolve_device(cfg.device)
        self.student = build_model(cfg.student.arch, self.data.input_shape, self.data.num_classes, seed=cfg.seed,
                                   pretrained_path=cfg.student.pretrained_path).to(self.device)
        self.optimizer = sgd(self.student, cfg.student.lr, cfg.student.momentum, cfg.student.weight_decay)
        self.objective = STUDENT_OBJECTIVES[cfg.student.objective](cfg.student, self.student, self.data["val"],
                                                                   self.data.num_classes)
        self.generator = np.random.default_rng([cfg.seed, 1])
        self.query = QUERY_STRATEGIES[cfg.query.name](cfg.query)
        self.query_generator = np.random.default_rng([cfg.seed, 4])
        self.pool = SoftLabelPool(len(self.data["transfer"]), cfg.federation.num_clients)
        self.bytes = {"down": {}, "up": {}}  # node id -> bytes this round
        self.totals = {"bytes_down_total": 0, "bytes_up_total": 0, "fedavg_bytes_total": 0}
        self.final_model: torch.nn.Module = self.student
        self.best_score: float | None = None
        self.best_round = 0
        self.run_key = uuid.uuid4().hex  # names the clients' on-disk states of this run (kept on resume)
        self.nodes: list[int] = []  # the nodes still in the federation
        self.partition_of: dict[int, int] = {}  # node id -> partition id, learnt from replies
        self.reports: dict[int, protocol.TeacherReport] = {}  # partition id -> this round's train report
        self.dropped: list[dict] = []  # every client that failed or timed out, with round, phase and reason
        self.round_failures: list[dict] = []
        self.resumed_after: list[int] = []
        self.earlier_wall_seconds = 0.0
        self._last_record: dict | None = None

    @property
    def checkpoint_path(self):  # noqa: ANN201 - a Path
        return self.run_dir.path / SERVER_CHECKPOINT

    def run(self, grid: Grid) -> dict:
        start = time.perf_counter()
        first_round = self._restore() + 1 if self.resume else 1
        self.nodes = self._wait_for_nodes(grid)
        record = self._last_record if self.resume else None
        transfer = self.data["transfer"]
        for server_round in range(first_round, self.cfg.federation.num_rounds + 1):
            round_start = time.perf_counter()
            self.bytes = {"down": {}, "up": {}}
            self.round_failures = []
            replies = self._ask(grid, protocol.TRAIN_TEACHER,
                                protocol.train_request(self.job, server_round, self.run_key),
                                server_round, "training teachers")
            self._take_reports(replies, server_round)

            teacher_error = None
            if self.objective.needs_val_softlabels or self.query.needs_teacher_error:
                val_logits, _, _ = self._query(grid, server_round, np.arange(len(self.data["val"])), False, "val")
                teacher_error = self._teacher_error(val_logits)
                if self.objective.needs_val_softlabels:
                    self.objective.observe_val(torch.softmax(val_logits / self.cfg.student.temperature, -1).mean(0))
            if self.privacy.unit == "example":
                self.client_epsilon = max(self.client_epsilon, *(t.epsilon for t in self.reports.values()))
            query_record = self._query_new_points(grid, server_round, teacher_error)

            self.display.phase(server_round, "aggregating and distilling")
            clients = self._clients()
            if isinstance(self.privacy, ServerRelease):
                indices, aggregator = self.released.indices, self.released
            else:
                indices, teacher_logits, base_logits = self.pool.answers(clients)
                aggregator = self.aggregator
                aggregator.prepare(self._aggregation_inputs(indices, teacher_logits, base_logits, clients))
            torch.manual_seed(self.cfg.seed * 7919 + server_round)
            loss = None
            if len(indices):
                loss = distill_student(self.student, self.optimizer, self.objective, transfer.x[indices],
                                       aggregator, self.generator)

            self.display.phase(server_round, "evaluating")
            model, student_choice = self._round_model()
            test_report, _ = self._evaluate(model)
            self._keep_if_best(model, server_round)
            reports = [self.reports[p] for p in clients]
            record = {
                "round": server_round,
                "test": test_report,
                "student_model": student_choice,
                "distill_loss": loss,
                "aggregator": self.cfg.aggregator.name,
                "aggregator_stats": self.aggregator.round_stats(),
                "query": query_record,
                **self._privacy_columns(),
                "communication": self._communication(),
                "participants": clients,
                "failed_clients": self.round_failures,
                **_teacher_summary(reports),
                "teachers": [vars(t) for t in reports],
                "wall_seconds": time.perf_counter() - round_start,
            }
            self.run_dir.append_metrics(record)
            self.display.round_done(record)
            for key in ("bytes_down_total", "bytes_up_total"):
                self.totals[key] += record["communication"][key]
            self.totals["fedavg_bytes_total"] += record["communication"]["fedavg_bytes_per_client"] * len(clients)
            self._save_checkpoint(server_round, record, time.perf_counter() - start)
        baselines = self._baselines(grid, self.cfg.federation.num_rounds)
        return self._finish(record, baselines, self.earlier_wall_seconds + time.perf_counter() - start)

    def _clients(self) -> list[int]:
        """Partition ids of the clients still in the federation, in order (the teachers' row order)."""
        return sorted(self.partition_of[n] for n in self.nodes if n in self.partition_of)

    def _take_reports(self, replies: list[Message], server_round: int) -> None:
        """Learn which node holds which partition from the train replies; after a resume, a node holding a
        partition that had dropped out earlier stays out (the uninterrupted run went on without it)."""
        gone = {d["partition"] for d in self.dropped}
        self.reports = {}
        for reply in replies:
            report = protocol.parse_train_reply(reply.content)
            node = reply.metadata.src_node_id
            if report.partition_id in self.reports:
                raise FederationError(f"two nodes answer for partition {report.partition_id}: give every SuperNode "
                                      "its own --node-config partition-id")
            self.partition_of[node] = report.partition_id
            if report.partition_id in gone:
                self.nodes.remove(node)
                continue
            self.reports[report.partition_id] = report
        self._check_enough(server_round, "training teachers")

    def _class_counts(self, clients: list[int]) -> torch.Tensor:
        return torch.tensor([self.reports[p].class_counts for p in clients])

    def _aggregation_inputs(self, indices: np.ndarray, teacher_logits: torch.Tensor, base_logits: torch.Tensor | None,
                            clients: list[int]) -> AggregationInputs:
        return AggregationInputs(
            teacher_logits=teacher_logits,
            temperature=self.cfg.student.temperature,
            class_counts=self._class_counts(clients),
            base_logits=base_logits,
            groups=self.data["transfer"].g[indices],
            group_names=self.data.group_names,
            seed=self.cfg.seed,
            clients=tuple(clients),
        )

    def _query_new_points(self, grid: Grid, server_round: int, teacher_error: float | None) -> dict:
        """Pick this round's transfer points with the query strategy under the budget (and, with a privacy cap,
        under what ε has left), ask every client about them and add the answers to the pool (or, with a
        server-side privacy mechanism, release noisy targets for them); returns what was done, for metrics.jsonl."""
        cfg = self.cfg.query
        candidates = self.pool.candidates(cfg.asks_again())
        budget = cfg.round_budget(self.pool.pool_size, self.pool.num_queries, len(candidates))
        wanted = budget
        if self.privacy_plan.cap is not None and self.privacy.unit == "client":
            budget = self._affordable(budget)
        chosen = np.zeros(0, dtype=np.int64)
        release_stats = {}
        if budget > 0:
            context = None
            if self.query.needs_student:
                student_logits = predict_logits(self.student, self.data["transfer"].x[candidates])
                context = QueryContext(student_logits=student_logits, teacher_error=teacher_error)
            chosen = self.query.select(candidates, budget, context, self.query_generator)
            logits, base, clients = self._query(grid, server_round, chosen, self.aggregator.needs_base)
            self.pool.add(chosen, logits, base, clients)
            if isinstance(self.privacy, ServerRelease):
                self._check_sensitivity(clients)
                release = self.privacy.release(
                    self.privacy_plan, self._aggregation_inputs(chosen, logits, base, clients), self.aggregator,
                    self.student, torch.from_numpy(self.data["transfer"].x[chosen]).to(self.device),
                    self.noise_generator,
                    self.privacy_rng)
                self.released.add(chosen[release.answered], release.targets)
                self.ledger.add(release.rdp, len(chosen), release.rdp_data_dependent)
                release_stats = release.stats
            elif self.privacy.client_noise:
                self.ledger.add(self.privacy.query_rdp(self.privacy_plan, len(chosen)), len(chosen))
        return {"strategy": cfg.name, "budget": budget, "num_new": int(len(chosen)),
                "pool_size": int(self.pool.queried.sum()), "soft_labels_queried": self.pool.num_queries,
                "teacher_error_val": teacher_error, "stopped_by_privacy_budget": budget < wanted,
                **release_stats, **self.query.last_stats}

    def _check_sensitivity(self, clients: list[int]) -> None:
        """The server-side noise was calibrated for the aggregate of every client; fewer clients may make one
        client's influence larger than the noise covers, and the run must not release with too little noise."""
        planned = self.privacy_plan.sensitivity
        if planned is None:
            return
        actual = self.aggregator.sensitivity(self.cfg.privacy.clip, len(clients))
        if actual > planned + 1e-12:
            raise FederationError(
                f"privacy={self.cfg.privacy.name}: only {len(clients)} of {self.cfg.federation.num_clients} clients "
                f"answered, and the {self.cfg.aggregator.name} aggregate of {len(clients)} has sensitivity "
                f"{actual:.4g} > the {planned:.4g} the noise was calibrated for; the run stops rather than release "
                "under-noised targets (set federation.min_clients=federation.num_clients to stop at the first drop)")

    def _affordable(self, budget: int) -> int:
        """The most of ``budget`` queries whose worst-case cost keeps ε within the privacy cap (ε grows with the
        number of queries, so a bisection finds it)."""
        low, high = 0, budget
        while low < high:
            mid = (low + high + 1) // 2
            if self.ledger.epsilon_if(self.privacy.query_rdp(self.privacy_plan, mid)) <= self.privacy_plan.cap:
                low = mid
            else:
                high = mid - 1
        return low

    def _privacy_columns(self) -> dict:
        """``epsilon_spent`` and ``delta`` (None: no privacy, ε = ∞), and the mechanism's details."""
        if self.privacy.unit == "none":
            return {"epsilon_spent": None, "delta": None, "privacy": {"mechanism": "none"}}
        p = self.cfg.privacy
        spent = self.client_epsilon if self.privacy.unit == "example" else self.ledger.epsilon()
        details = {"mechanism": p.name, "unit": self.privacy.unit,
                   "noise_multiplier": self.privacy_plan.noise_multiplier,
                   "planned_epsilon": self.privacy_plan.planned_epsilon, "cap": self.privacy_plan.cap,
                   "invocations": self.ledger.invocations}
        if self.privacy_plan.sensitivity is not None:
            details["sensitivity"] = self.privacy_plan.sensitivity
        if self.privacy.data_dependent_accounting:
            details["epsilon_data_dependent"] = self.ledger.epsilon_data_dependent()
        if self.privacy.unit == "example":
            details["client_noise_multipliers"] = self.privacy_plan.client_noise_multipliers
            del details["invocations"]  # DP-SGD steps are counted by each client's own accountant
        return {"epsilon_spent": spent, "delta": p.delta, "privacy": details}

    def _teacher_error(self, val_logits: torch.Tensor) -> float:
        """Error rate of the teachers' ensemble (mean probability) on the server's labeled split."""
        pred = torch.softmax(val_logits, -1).mean(0).argmax(1).numpy()
        return float(np.mean(pred != self.data["val"].y))

    def _communication(self) -> dict:
        """This round's payload bytes per client (by partition id, or ``node-<id>`` for a node that failed before
        its partition was known), and what FedAvg of the student would move."""
        def client(node: int) -> str:
            return str(self.partition_of[node]) if node in self.partition_of else f"node-{node}"

        down = {client(n): b for n, b in sorted(self.bytes["down"].items())}
        up = {client(n): b for n, b in sorted(self.bytes["up"].items())}
        return {"bytes_down": down, "bytes_up": up, "bytes_down_total": sum(down.values()),
                "bytes_up_total": sum(up.values()),
                "fedavg_bytes_per_client": protocol.fedavg_bytes_per_client_round(self.student)}

    def _query(self, grid: Grid, server_round: int, indices: np.ndarray, with_base: bool,
               split: str = "transfer") -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """The logits [M, n, C] on ``indices`` of ``split`` of every teacher that answered (ordered by partition
        id), its ERM base's when ``with_base``, and the answering partition ids."""
        query = self.cfg.query
        replies = self._ask(grid, protocol.QUERY_SOFTLABELS,
                            protocol.query_request(self.job, server_round, indices, with_base, split,
                                                   query.compression, query.top_k),
                            server_round, f"querying soft labels ({split})")
        compression = COMPRESSIONS[query.compression](query.top_k)
        answers = sorted((protocol.parse_query_reply(r.content, len(indices), self.data.num_classes, with_base,
                                                     compression)
                          for r in replies), key=lambda a: a.partition_id)
        logits = torch.from_numpy(np.stack([a.logits for a in answers]))
        base = torch.from_numpy(np.stack([a.base_logits for a in answers])) if with_base else None
        return logits, base, [a.partition_id for a in answers]

    def _baselines(self, grid: Grid, server_round: int) -> dict:
        cfg = self.cfg.baselines
        out = {}
        if cfg.ensemble and self.privacy.unit != "none":
            out["ensemble"] = {"skipped": "the teachers' answers on the test split would be a release outside the "
                                          f"privacy={self.cfg.privacy.name} accounting"}
        elif cfg.ensemble:
            test_logits, _, _ = self._query(grid, server_round, np.arange(len(self.data["test"])), False, "test")
            out["ensemble"] = ensemble_report(test_logits, self.data)
        if cfg.one_hot:
            self.display.phase(server_round, "baseline: one-hot student on the labeled server split")
            out["one_hot"] = one_hot_report(self.cfg, self.data)
        if cfg.centralized:
            self.display.phase(server_round, "baseline: NON-FEDERATED centralized erm and group_dro")
            out.update(centralized_reports(self.cfg, self.data))
        return out

    def _evaluate(self, model: torch.nn.Module, split: str = "test") -> tuple[dict, np.ndarray]:
        data = self.data[split]
        pred = predict_logits(model, data.x).argmax(1).numpy()
        return group_report(pred, data.y, data.g, self.data.group_names), pred

    def _round_model(self) -> tuple[torch.nn.Module, str]:
        """The distilled student, or with student DFR a copy whose last layer is retrained on part of the
        labeled server split, kept only if it has the better worst-group accuracy on the other part."""
        cfg = self.cfg.student
        if not cfg.dfr:
            return self.student, "distilled"
        fit_part, select_part = held_out_split(self.data["val"], cfg.dfr_holdout)
        candidate = copy.deepcopy(self.student)
        retrain_last_layer(candidate, fit_part, cfg.dfr_subsets, cfg.dfr_steps, cfg.dfr_lr, cfg.dfr_l2,
                           np.random.default_rng([self.cfg.seed, 3]))
        scores = {}
        for name, model in (("dfr", candidate), ("distilled", self.student)):
            pred = predict_logits(model, select_part.x).argmax(1).numpy()
            scores[name] = worst_group_accuracy(pred, select_part.y, select_part.g)
        return (candidate, "dfr") if scores["dfr"] >= scores["distilled"] else (self.student, "distilled")

    def _keep_if_best(self, model: torch.nn.Module, server_round: int) -> None:
        """Model selection on the server's labeled split only: the round with the best validation WGA."""
        if not self.cfg.student.select_best_round:
            self.final_model = model
            return
        score = self._evaluate(model, "val")[0]["worst_group_accuracy"]
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_round = score, server_round
            self.final_model = copy.deepcopy(model)

    def _finish(self, last: dict, baselines: dict, wall_seconds: float) -> dict:
        test_report, pred = self._evaluate(self.final_model)
        test = self.data["test"]
        self.run_dir.write_predictions("test", test.y, test.g, pred)
        self.run_dir.save_student(cpu_state(self.final_model))
        summary = {
            "run_dir": str(self.run_dir.path),
            "dataset": self.cfg.dataset.name,
            "dataset_description": self.data.description,
            "aggregator": self.cfg.aggregator.name,
            "student_objective": self.cfg.student.objective,
            "teacher_objective": self.cfg.teacher.objective,
            "num_clients": self.cfg.federation.num_clients,
            "num_rounds": self.cfg.federation.num_rounds,
            "seed": self.cfg.seed,
            "test": test_report,
            "selected_round": self.best_round if self.cfg.student.select_best_round else self.cfg.federation.num_rounds,
            "teachers": {
                "mean_accuracy": last["teacher_mean_accuracy"],
                "mean_worst_group_accuracy": last["teacher_mean_worst_group_accuracy"],
                "best_worst_group_accuracy": max(t["test_worst_group_accuracy"] for t in last["teachers"]),
                "worst_worst_group_accuracy": min(t["test_worst_group_accuracy"] for t in last["teachers"]),
            },
            "baselines": baselines,
            "dropped_clients": self.dropped,
            "resumed_after_rounds": self.resumed_after,
            **self._privacy_columns(),
            "communication": {**self.totals, "soft_labels_queried": self.pool.num_queries,
                              "uplink_ratio_to_fedavg": self.totals["bytes_up_total"] / (self.totals[
                                  "fedavg_bytes_total"] / 2)},
            "wall_seconds": wall_seconds,
        }
        self.run_dir.write_summary(summary)
        return summary

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        wanted = self.cfg.federation.num_clients
        deadline = time.monotonic() + NODE_WAIT_SECONDS
        while len(nodes := sorted(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} of {wanted} clients (federation.num_clients) connected within "
                    f"{NODE_WAIT_SECONDS:.0f} s; with `flwr run`, size the simulation first "
                    f"(`flwr federation simulation-config --num-supernodes {wanted}`) or use `make flwr-run`"
                )
            self.display.phase(1, f"waiting for clients ({len(nodes)}/{wanted})")
            time.sleep(1.0)
        return nodes[:wanted]

    def _ask(self, grid: Grid, message_type: str, content, server_round: int, phase: str) -> list[Message]:
        """Send ``content`` to every node still in and return the replies that arrived without error; the others
        are dropped (and logged with their client id) and the round goes on while ``min_clients`` remain."""
        nodes = list(self.nodes)
        self.display.phase(server_round, phase, 0, len(nodes))
        messages = [Message(content, dst_node_id=node, message_type=message_type, group_id=str(server_round))
                    for node in nodes]
        for message in messages:
            node = message.metadata.dst_node_id
            self.bytes["down"][node] = self.bytes["down"].get(node, 0) + protocol.payload_bytes(message.content)
        timeout = self.cfg.federation.round_timeout
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        # the grid has set each message's id; an error reply for a node that went offline comes from the
        # SuperLink (src_node_id 1), so the node is the addressee of the message the reply answers
        addressee = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        answered, good = set(), []
        for reply in replies:
            node = addressee.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            answered.add(node)
            if reply.has_error():
                self._drop(node, server_round, phase, f"error reply (code {reply.error.code}): {reply.error.reason}")
                continue
            self.bytes["up"][node] = self.bytes["up"].get(node, 0) + protocol.payload_bytes(reply.content)
            good.append(reply)
        for node in nodes:
            if node not in answered:
                self._drop(node, server_round, phase, f"no reply within federation.round_timeout={timeout:g} s")
        self.display.phase(server_round, phase, len(good), len(nodes))
        self._check_enough(server_round, phase)
        return good

    def _drop(self, node: int, server_round: int, phase: str, reason: str) -> None:
        partition = self.partition_of.get(node)
        failure = {"round": server_round, "phase": phase, "node_id": node, "partition": partition, "reason": reason}
        self.round_failures.append(failure)
        self.dropped.append(failure)
        self.nodes.remove(node)
        self.display.console.print(
            f"[yellow]round {server_round}: client {partition if partition is not None else '?'} (node {node}) "
            f"dropped while {phase}: {reason}[/]", highlight=False, soft_wrap=True)

    def _check_enough(self, server_round: int, phase: str) -> None:
        needed = self.cfg.federation.min_clients
        if len(self.nodes) >= needed:
            return
        failures = "; ".join(f"client {f['partition']} (node {f['node_id']}), {f['phase']}: {f['reason']}"
                             for f in self.dropped) or "none failed; too few nodes"
        resume = (f"; the checkpoint of round {server_round - 1} is in {self.checkpoint_path}: fix the clients and "
                  f"continue with `fedkd resume={self.run_dir.path}`") if self.checkpoint_path.exists() else ""
        raise FederationError(
            f"round {server_round} ({phase}): {len(self.nodes)} clients left, fewer than federation.min_clients="
            f"{needed}; failed: {failures}{resume}")

    def _save_checkpoint(self, server_round: int, record: dict, wall_seconds: float) -> None:
        """Everything the next round needs, written atomically after the round's metrics line."""
        atomic_save({
            "format": CHECKPOINT_FORMAT,
            "round": server_round,
            "config": self.cfg.to_dict(),
            "run_key": self.run_key,
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "objective": self.objective.state_dict(),
            "pool": self.pool.state_dict(),
            "released": self.released.state_dict(),
            "ledger": self.ledger.state_dict(),
            "client_epsilon": self.client_epsilon,
            "rng": {"distill": rng_state(self.generator), "query": rng_state(self.query_generator),
                    "privacy": rng_state(self.privacy_rng), "noise": self.noise_generator.get_state(),
                    "torch": torch.get_rng_state()},
            "totals": dict(self.totals),
            "best": {"score": self.best_score, "round": self.best_round,
                     "model": self.final_model.state_dict() if self.cfg.student.select_best_round else None},
            "dropped": self.dropped,
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
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.objective.load_state_dict(state["objective"])
        self.pool.load_state_dict(state["pool"])
        self.released.load_state_dict(state["released"])
        self.ledger.load_state_dict(state["ledger"])
        self.client_epsilon = state["client_epsilon"]
        rng = state["rng"]
        restore_rng(self.generator, rng["distill"])
        restore_rng(self.query_generator, rng["query"])
        restore_rng(self.privacy_rng, rng["privacy"])
        self.noise_generator.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])
        self.totals = dict(state["totals"])
        best = state["best"]
        self.best_score, self.best_round = best["score"], best["round"]
        if best["model"] is not None:
            self.final_model = copy.deepcopy(self.student)
            self.final_model.load_state_dict(best["model"])
        self.dropped = list(state["dropped"])
        self.resumed_after = [*state["resumed_after"], state["round"]]
        self._last_record = state["last_record"]
        self.earlier_wall_seconds = state["wall_seconds"]
        self.run_dir.set_aside_metrics_after(state["round"])
        self.display.resume_at(state["round"])
        return state["round"]


def _teacher_summary(reports: list[protocol.TeacherReport]) -> dict:
    return {
        "teacher_mean_accuracy": float(np.mean([t.test_accuracy for t in reports])),
        "teacher_mean_worst_group_accuracy": float(np.mean([t.test_worst_group_accuracy for t in reports])),
    }
