"""The round loop of federated distillation. It talks to clients only through ``grid.send_and_receive``,
so the same loop runs on Flower's engines and on the in-process grid of the tests and benchmarks."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp import Grid

from fedkd import protocol
from fedkd.aggregation import AGGREGATORS, AggregationInputs
from fedkd.baselines import centralized_reports, ensemble_report, one_hot_report
from fedkd.compression import COMPRESSIONS
from fedkd.config import RunConfig, needs_class_counts
from fedkd.data import federated_data
from fedkd.dfr import held_out_split, retrain_last_layer
from fedkd.display import RunDisplay
from fedkd.distill import STUDENT_OBJECTIVES, distill_student
from fedkd.metrics import group_report, worst_group_accuracy
from fedkd.models import build_model
from fedkd.privacy import PRIVACY_MECHANISMS, RdpLedger, ReleasedTargets, ServerRelease
from fedkd.query import QUERY_STRATEGIES, QueryContext, SoftLabelPool
from fedkd.results import RunDirectory
from fedkd.training import predict_logits, sgd

NODE_WAIT_SECONDS = 120.0


class FederationError(RuntimeError):
    """Clients did not answer as the round needs (missing nodes, error replies, malformed content)."""


class FederatedDistillation:
    """Train teachers on the clients, aggregate their soft labels on the transfer pool, distill one student."""

    def __init__(self, cfg: RunConfig, run_dir: RunDirectory, display: RunDisplay) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.display = display
        self.aggregator = AGGREGATORS[cfg.aggregator.name](cfg.aggregator)
        federated = federated_data(cfg.dataset, cfg.partition, cfg.federation.num_clients, cfg.seed)
        self.data = federated.benchmark
        self.privacy = PRIVACY_MECHANISMS[cfg.privacy.name](cfg.privacy)
        self.privacy_plan = self.privacy.plan(cfg, len(self.data["transfer"]),
                                              [len(federated.shard(i)) for i in range(cfg.federation.num_clients)],
                                              self.aggregator.needs_base)
        self.ledger = RdpLedger(cfg.privacy.delta)
        self.released = ReleasedTargets(len(self.data["transfer"]), self.data.num_classes)
        self.noise_generator = torch.Generator().manual_seed(cfg.seed * 7919 + 5)
        self.privacy_rng = np.random.default_rng([cfg.seed, 5])
        self.client_epsilon = 0.0
        self.job = cfg.client_job(erm_base=self.aggregator.needs_base,
                                  release_counts=needs_class_counts(cfg.aggregator),
                                  noise_multiplier=self.privacy_plan.noise_multiplier)
        self.student = build_model(cfg.student.arch, self.data.input_shape, self.data.num_classes, seed=cfg.seed)
        self.optimizer = sgd(self.student, cfg.student.lr, cfg.student.momentum, cfg.student.weight_decay)
        self.objective = STUDENT_OBJECTIVES[cfg.student.objective](cfg.student, self.student, self.data["val"],
                                                                   self.data.num_classes)
        self.generator = np.random.default_rng([cfg.seed, 1])
        self.query = QUERY_STRATEGIES[cfg.query.name](cfg.query)
        self.query_generator = np.random.default_rng([cfg.seed, 4])
        self.pool = SoftLabelPool(len(self.data["transfer"]))
        self.bytes = {"down": {}, "up": {}}  # node id -> bytes this round
        self.totals = {"bytes_down_total": 0, "bytes_up_total": 0, "fedavg_bytes_total": 0}
        self.final_model: torch.nn.Module = self.student
        self.best_score: float | None = None
        self.best_round = 0

    def run(self, grid: Grid) -> dict:
        start = time.perf_counter()
        nodes = self._wait_for_nodes(grid)
        transfer = self.data["transfer"]
        for server_round in range(1, self.cfg.federation.num_rounds + 1):
            round_start = time.perf_counter()
            self.bytes = {"down": {}, "up": {}}
            replies = self._ask(grid, nodes, protocol.TRAIN_TEACHER, protocol.train_request(self.job, server_round),
                                server_round, "training teachers")
            partition_of = {r.metadata.src_node_id: protocol.parse_train_reply(r.content).partition_id
                            for r in replies}
            reports = sorted((protocol.parse_train_reply(r.content) for r in replies), key=lambda t: t.partition_id)

            teacher_error = None
            if self.objective.needs_val_softlabels or self.query.needs_teacher_error:
                val_logits, _ = self._query(grid, nodes, server_round, np.arange(len(self.data["val"])), False, "val")
                teacher_error = self._teacher_error(val_logits)
                if self.objective.needs_val_softlabels:
                    self.objective.observe_val(torch.softmax(val_logits / self.cfg.student.temperature, -1).mean(0))
            class_counts = torch.tensor([t.class_counts for t in reports])
            if self.privacy.unit == "example":
                self.client_epsilon = max(t.epsilon for t in reports)
            query_record = self._query_new_points(grid, nodes, server_round, teacher_error, class_counts)

            self.display.phase(server_round, "aggregating and distilling")
            if isinstance(self.privacy, ServerRelease):
                indices, aggregator = self.released.indices, self.released
            else:
                indices, teacher_logits, base_logits = self.pool.answers()
                aggregator = self.aggregator
                aggregator.prepare(self._aggregation_inputs(indices, teacher_logits, base_logits, class_counts))
            torch.manual_seed(self.cfg.seed * 7919 + server_round)
            loss = None
            if len(indices):
                loss = distill_student(self.student, self.optimizer, self.objective, transfer.x[indices],
                                       aggregator, self.generator)

            self.display.phase(server_round, "evaluating")
            model, student_choice = self._round_model()
            test_report, _ = self._evaluate(model)
            self._keep_if_best(model, server_round)
            record = {
                "round": server_round,
                "test": test_report,
                "student_model": student_choice,
                "distill_loss": loss,
                "aggregator": self.cfg.aggregator.name,
                "aggregator_stats": self.aggregator.round_stats(),
                "query": query_record,
                **self._privacy_columns(),
                "communication": self._communication(partition_of),
                **_teacher_summary(reports),
                "teachers": [vars(t) for t in reports],
                "wall_seconds": time.perf_counter() - round_start,
            }
            self.run_dir.append_metrics(record)
            self.display.round_done(record)
            for key in ("bytes_down_total", "bytes_up_total"):
                self.totals[key] += record["communication"][key]
            self.totals["fedavg_bytes_total"] += record["communication"]["fedavg_bytes_per_client"] * len(nodes)
        baselines = self._baselines(grid, nodes, server_round)
        return self._finish(record, baselines, time.perf_counter() - start)

    def _aggregation_inputs(self, indices: np.ndarray, teacher_logits: torch.Tensor, base_logits: torch.Tensor | None,
                            class_counts: torch.Tensor) -> AggregationInputs:
        return AggregationInputs(
            teacher_logits=teacher_logits,
            temperature=self.cfg.student.temperature,
            class_counts=class_counts,
            base_logits=base_logits,
            groups=self.data["transfer"].g[indices],
            group_names=self.data.group_names,
            seed=self.cfg.seed,
        )

    def _query_new_points(self, grid: Grid, nodes: list[int], server_round: int,
                          teacher_error: float | None, class_counts: torch.Tensor) -> dict:
        """Pick this round's transfer points with the query strategy under the budget (and, with a privacy cap,
        under what ε has left), ask every client about them and add the answers to the pool (or, with a
        server-side privacy mechanism, release noisy targets for them); returns what was done, for metrics.jsonl."""
        cfg = self.cfg.query
        candidates = self.pool.candidates(cfg.requery or cfg.name == "all")
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
            logits, base = self._query(grid, nodes, server_round, chosen, self.aggregator.needs_base)
            self.pool.add(chosen, logits, base)
            if isinstance(self.privacy, ServerRelease):
                release = self.privacy.release(
                    self.privacy_plan, self._aggregation_inputs(chosen, logits, base, class_counts), self.aggregator,
                    self.student, torch.from_numpy(self.data["transfer"].x[chosen]), self.noise_generator,
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
        if self.cfg.privacy.name == "none":
            return {"epsilon_spent": None, "delta": None, "privacy": {"mechanism": "none"}}
        p = self.cfg.privacy
        spent = self.client_epsilon if self.privacy.unit == "example" else self.ledger.epsilon()
        details = {"mechanism": p.name, "unit": self.privacy.unit,
                   "noise_multiplier": self.privacy_plan.noise_multiplier,
                   "planned_epsilon": self.privacy_plan.planned_epsilon, "cap": self.privacy_plan.cap,
                   "invocations": self.ledger.invocations}
        if self.privacy_plan.sensitivity is not None:
            details["sensitivity"] = self.privacy_plan.sensitivity
        if p.name == "gnmax":
            details["epsilon_data_dependent"] = self.ledger.epsilon_data_dependent()
        if self.privacy.unit == "example":
            details["client_noise_multipliers"] = self.privacy_plan.client_noise_multipliers
            del details["invocations"]  # DP-SGD steps are counted by each client's own accountant
        return {"epsilon_spent": spent, "delta": p.delta, "privacy": details}

    def _teacher_error(self, val_logits: torch.Tensor) -> float:
        """Error rate of the teachers' ensemble (mean probability) on the server's labeled split."""
        pred = torch.softmax(val_logits, -1).mean(0).argmax(1).numpy()
        return float(np.mean(pred != self.data["val"].y))

    def _communication(self, partition_of: dict[int, int]) -> dict:
        """This round's payload bytes per client (by partition id), and what FedAvg of the student would move."""
        down = {str(partition_of[n]): b for n, b in sorted(self.bytes["down"].items())}
        up = {str(partition_of[n]): b for n, b in sorted(self.bytes["up"].items())}
        return {"bytes_down": down, "bytes_up": up, "bytes_down_total": sum(down.values()),
                "bytes_up_total": sum(up.values()),
                "fedavg_bytes_per_client": protocol.fedavg_bytes_per_client_round(self.student)}

    def _query(self, grid: Grid, nodes: list[int], server_round: int, indices: np.ndarray, with_base: bool,
               split: str = "transfer") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every teacher's logits [M, n, C] on ``indices`` of ``split`` (ordered by partition id), and its ERM
        base's when ``with_base``."""
        query = self.cfg.query
        replies = self._ask(grid, nodes, protocol.QUERY_SOFTLABELS,
                            protocol.query_request(self.job, server_round, indices, with_base, split,
                                                   query.compression, query.top_k),
                            server_round, f"querying soft labels ({split})")
        compression = COMPRESSIONS[query.compression](query.top_k)
        answers = sorted((protocol.parse_query_reply(r.content, len(indices), self.data.num_classes, with_base,
                                                     compression)
                          for r in replies), key=lambda a: a.partition_id)
        logits = torch.from_numpy(np.stack([a.logits for a in answers]))
        base = torch.from_numpy(np.stack([a.base_logits for a in answers])) if with_base else None
        return logits, base

    def _baselines(self, grid: Grid, nodes: list[int], server_round: int) -> dict:
        cfg = self.cfg.baselines
        out = {}
        if cfg.ensemble and self.cfg.privacy.name != "none":
            out["ensemble"] = {"skipped": "the teachers' answers on the test split would be a release outside the "
                                          f"privacy={self.cfg.privacy.name} accounting"}
        elif cfg.ensemble:
            test_logits, _ = self._query(grid, nodes, server_round, np.arange(len(self.data["test"])), False, "test")
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
        self.run_dir.save_student(self.final_model.state_dict())
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

    def _ask(self, grid: Grid, nodes: list[int], message_type: str, content, server_round: int,
             phase: str) -> list[Message]:
        self.display.phase(server_round, phase, 0, len(nodes))
        messages = [Message(content, dst_node_id=node, message_type=message_type, group_id=str(server_round))
                    for node in nodes]
        for message in messages:
            node = message.metadata.dst_node_id
            self.bytes["down"][node] = self.bytes["down"].get(node, 0) + protocol.payload_bytes(message.content)
        replies = list(grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout))
        for reply in replies:
            if not reply.has_error():
                node = reply.metadata.src_node_id
                self.bytes["up"][node] = self.bytes["up"].get(node, 0) + protocol.payload_bytes(reply.content)
        self.display.phase(server_round, phase, len(replies), len(nodes))
        failed = [f"node {r.metadata.src_node_id}: {r.error.reason}" for r in replies if r.has_error()]
        if failed:
            raise FederationError(f"{message_type} failed on {len(failed)} client(s): " + "; ".join(failed))
        if len(replies) != len(nodes):
            answered = {r.metadata.src_node_id for r in replies}
            missing = [n for n in nodes if n not in answered]
            raise FederationError(f"{message_type}: no reply within {self.cfg.federation.round_timeout}s "
                                  f"from node(s) {missing}")
        return replies


def _teacher_summary(reports: list[protocol.TeacherReport]) -> dict:
    return {
        "teacher_mean_accuracy": float(np.mean([t.test_accuracy for t in reports])),
        "teacher_mean_worst_group_accuracy": float(np.mean([t.test_worst_group_accuracy for t in reports])),
    }
