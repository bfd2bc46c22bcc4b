"""The clients as the server sees them: which nodes are still in, which partition each holds, what they sent and
received, and who failed. Every message to the clients goes out through ``Federation.ask`` and every reply is
decoded through ``Federation.accept``, so drops (error replies, silence, replies that break the wire contract),
the byte meter and the ``min_clients`` rule are applied in one place whatever the round asks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedkd import protocol
from fedkd.config import RunConfig
from fedkd.display import RunDisplay
from fedkd.stopping import check_stop

NODE_WAIT_SECONDS = 120.0
PULL_INTERVAL_SECONDS = 0.1
RETRY_PAUSE_SECONDS = 1.0  # before the first retry; it doubles with each (a restarting Ray actor may take seconds)
INFRASTRUCTURE_RETRIES = 6  # 63 s in all: a Ray actor restarting on a loaded machine took over 15 s
# error codes of a reply that failed on the way rather than in the ClientApp: Flower's simulation answers UNKNOWN
# when the Ray worker running a client died (ActorDiedError), a SuperLink answers NODE_UNAVAILABLE for a node it
# lost, a SuperNode CLIENT_APP_CRASHED for a ClientApp process that died; the ClientApp's own exceptions come back
# as CLIENT_APP_RAISED_EXCEPTION (or the in-process grid's code) and are never retried
INFRASTRUCTURE_ERRORS = frozenset({ErrorCode.UNKNOWN, ErrorCode.MESSAGE_UNAVAILABLE,
                                   ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.NODE_UNAVAILABLE,
                                   ErrorCode.CLIENT_APP_CRASHED})


Parsed = TypeVar("Parsed", protocol.TeacherReport, protocol.SoftLabelReply)


class FederationError(RuntimeError):
    """Clients did not answer as the round needs (too few replies, error replies, malformed content)."""


class Federation:
    """The nodes still in, the partition ids learnt from their replies, this round's train reports, the drops
    and the payload bytes. ``checkpoint_path`` and ``run_path`` only feed the hint of how to resume when too few
    clients are left."""

    def __init__(self, cfg: RunConfig, display: RunDisplay, checkpoint_path: Path, run_path: Path) -> None:
        self.cfg = cfg.federation
        self.display = display
        self.checkpoint_path = checkpoint_path
        self.run_path = run_path
        self.nodes: list[int] = []  # the nodes still in the federation
        self.partition_of: dict[int, int] = {}  # node id -> partition id, learnt from replies
        self.reports: dict[int, protocol.TeacherReport] = {}  # partition id -> this round's train report
        self.dropped: list[dict] = []  # every client that failed or timed out, with round, phase and reason
        self.round_failures: list[dict] = []
        self.bytes: dict[str, dict[int, int]] = {"down": {}, "up": {}}  # node id -> bytes this round
        self.totals = {"bytes_down_total": 0, "bytes_up_total": 0, "fedavg_bytes_total": 0}

    def state_dict(self) -> dict:
        """Nodes and partition ids are learnt again from the next replies; drops and byte totals are not."""
        return {"totals": dict(self.totals), "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        self.totals = dict(state["totals"])
        self.dropped = list(state["dropped"])

    def start_round(self) -> None:
        """A fresh byte meter and failure list for the round about to start."""
        self.bytes = {"down": {}, "up": {}}
        self.round_failures = []

    def clients(self) -> list[int]:
        """Partition ids of the clients still in the federation, in order (the teachers' row order)."""
        return sorted(self.partition_of[n] for n in self.nodes if n in self.partition_of)

    def class_counts(self, clients: list[int]) -> torch.Tensor:
        """The class counts ``clients`` reported with this round's teachers, one row each."""
        return torch.tensor([self.reports[p].class_counts for p in clients])

    def wait_for_nodes(self, grid: Grid) -> None:
        """Take the first ``num_clients`` nodes once that many are connected; a federation that never fills up
        stops the run with a hint on sizing the simulation."""
        wanted = self.cfg.num_clients
        deadline = time.monotonic() + NODE_WAIT_SECONDS
        while len(nodes := sorted(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} of {wanted} clients (federation.num_clients) connected within "
                    f"{NODE_WAIT_SECONDS:.0f} s; with `flwr run`, size the simulation first "
                    f"(`flwr federation simulation-config --num-supernodes {wanted}`) or use `make flwr-run`"
                )
            self.display.phase(1, f"waiting for clients ({len(nodes)}/{wanted})")
            check_stop()
            time.sleep(1.0)
        self.nodes = nodes[:wanted]

    def ask(self, grid: Grid, message_type: str, content: RecordDict, server_round: int,
            phase: str) -> list[Message]:
        """Send ``content`` to every node still in and return the good replies, in node order. A reply that
        failed on the way (the worker running the client died, the node's process was lost) is asked again,
        ``INFRASTRUCTURE_RETRIES`` times within ``round_timeout``, after 1, 2, 4, … 32 seconds; a client that answers
        with its own error or stays silent is dropped (and logged with its client id), and the round goes on while
        ``min_clients`` remain. A stop signal ends the wait at once."""
        nodes = list(self.nodes)
        self.display.phase(server_round, phase, 0, len(nodes))
        timeout = self.cfg.round_timeout
        deadline = time.monotonic() + timeout
        pending: dict[str, tuple[int, int]] = {}  # message id -> (node, attempt)
        retry_at: list[tuple[float, int, int]] = []  # (when, node, attempt)
        good: dict[int, Message] = {}
        failed: dict[int, str] = {}

        def push(batch: list[tuple[int, int]]) -> None:
            messages = [Message(content, dst_node_id=node, message_type=message_type, group_id=str(server_round))
                        for node, _ in batch]
            for node, attempt in batch:  # the meter counts the protocol's messages, not the transport's retries
                if attempt == 0:
                    self.bytes["down"][node] = self.bytes["down"].get(node, 0) + protocol.payload_bytes(content)
            ids = list(grid.push_messages(messages))
            if len(ids) != len(messages):
                raise FederationError(f"round {server_round} ({phase}): the SuperLink accepted {len(ids)} of "
                                      f"{len(messages)} messages")
            pending.update(zip(ids, batch, strict=True))

        push([(node, 0) for node in nodes])
        while True:  # every message pushed is pulled at least once, even one pushed after the deadline
            check_stop()
            for reply in grid.pull_messages(list(pending)):
                node, attempt = pending.pop(reply.metadata.reply_to_message_id)
                if not reply.has_error():
                    self.bytes["up"][node] = self.bytes["up"].get(node, 0) + protocol.payload_bytes(reply.content)
                    good[node] = reply
                    continue
                reason = f"error reply (code {reply.error.code}): {reply.error.reason}"
                pause = RETRY_PAUSE_SECONDS * 2**attempt
                if (reply.error.code in INFRASTRUCTURE_ERRORS and attempt < INFRASTRUCTURE_RETRIES
                        and time.monotonic() + pause < deadline):
                    self._note(server_round, node, f"failed on the way while {phase}, asking again in {pause:g} s: "
                               f"{reason}")
                    retry_at.append((time.monotonic() + pause, node, attempt + 1))
                    continue
                failed[node] = reason + (f" (after {attempt} retries)" if attempt else "")
            if not (pending or retry_at) or time.monotonic() >= deadline:
                break
            now = time.monotonic()
            if due := [(node, attempt) for when, node, attempt in retry_at if when <= now]:
                retry_at = [r for r in retry_at if r[0] > now]
                push(due)
            else:
                time.sleep(PULL_INTERVAL_SECONDS)
        for node in nodes:
            if node in failed:
                self._drop(node, server_round, phase, failed[node])
            elif node not in good:
                self._drop(node, server_round, phase, f"no reply within federation.round_timeout={timeout:g} s")
        self.display.phase(server_round, phase, len(good), len(nodes))
        self.check_enough(server_round, phase)
        return [good[node] for node in nodes if node in good]

    def accept(self, replies: list[Message], parse: Callable[[RecordDict], Parsed], server_round: int,
               phase: str) -> list[tuple[int, Parsed]]:
        """(node, ``parse(content)``) of every reply that keeps the wire contract, in order. A reply that breaks it
        (``parse`` raises ``ProtocolError``: a missing key, a wrong shape, a NaN, a count below 0, an accuracy above
        1, ...) or names another partition than its node answered for before is a failed client: dropped and
        recorded like an error reply, and the round goes on while ``min_clients`` remain."""
        accepted = []
        for reply in replies:
            node = reply.metadata.src_node_id
            try:
                parsed = parse(reply.content)
                known = self.partition_of.get(node)
                if known is not None and parsed.partition_id != known:
                    raise protocol.ProtocolError(f"partition_id={parsed.partition_id} but the node answered for "
                                                 f"partition {known} before")
            except protocol.ProtocolError as err:
                self._drop(node, server_round, phase, f"reply breaks the contract: {err}")
                continue
            accepted.append((node, parsed))
        self.check_enough(server_round, phase)
        return accepted

    def take_reports(self, replies: list[Message], server_round: int, num_classes: int, num_groups: int) -> None:
        """Learn which node holds which partition from the train replies that keep the contract (reports of
        ``num_classes`` class and ``num_groups`` group counts); after a resume, a node holding a partition that had
        dropped out earlier stays out (the uninterrupted run went on without it)."""
        gone = {d["partition"] for d in self.dropped}
        self.reports = {}

        def parse(content: RecordDict) -> protocol.TeacherReport:
            return protocol.parse_train_reply(content, num_classes, num_groups, self.cfg.num_clients)

        for node, report in self.accept(replies, parse, server_round, "training teachers"):
            if report.partition_id in self.reports:
                raise FederationError(f"two nodes answer for partition {report.partition_id}: give every SuperNode "
                                      "its own --node-config partition-id")
            self.partition_of[node] = report.partition_id
            if report.partition_id in gone:
                self.nodes.remove(node)
                continue
            self.reports[report.partition_id] = report
        self.check_enough(server_round, "training teachers")

    def _drop(self, node: int, server_round: int, phase: str, reason: str) -> None:
        partition = self.partition_of.get(node)
        failure = {"round": server_round, "phase": phase, "node_id": node, "partition": partition, "reason": reason}
        self.round_failures.append(failure)
        self.dropped.append(failure)
        self.nodes.remove(node)
        self._note(server_round, node, f"dropped while {phase}: {reason}")

    def _note(self, server_round: int, node: int, what: str) -> None:
        partition = self.partition_of.get(node)
        self.display.console.print(
            f"[yellow]round {server_round}: client {partition if partition is not None else '?'} (node {node}) "
            f"{what}[/]", highlight=False, soft_wrap=True)

    def check_enough(self, server_round: int, phase: str) -> None:
        """Stop the run, naming every failure and the checkpoint to resume from, once fewer than ``min_clients``
        nodes are left."""
        needed = self.cfg.min_clients
        if len(self.nodes) >= needed:
            return
        failures = "; ".join(f"client {'?' if f['partition'] is None else f['partition']} (node {f['node_id']}), "
                             f"{f['phase']}: {f['reason']}"
                             for f in self.dropped) or "none failed; too few nodes"
        resume = (f"; the checkpoint of round {server_round - 1} is in {self.checkpoint_path}: fix the clients and "
                  f"continue with `fedkd resume={self.run_path}`") if self.checkpoint_path.exists() else ""
        raise FederationError(
            f"round {server_round} ({phase}): {len(self.nodes)} clients left, fewer than federation.min_clients="
            f"{needed}; failed: {failures}{resume}")

    def communication(self, student: torch.nn.Module) -> dict:
        """This round's payload bytes per client (by partition id, or ``node-<id>`` for a node that failed before
        its partition was known), and what FedAvg of the student would move."""
        def client(node: int) -> str:
            return str(self.partition_of[node]) if node in self.partition_of else f"node-{node}"

        down = {client(n): b for n, b in sorted(self.bytes["down"].items())}
        up = {client(n): b for n, b in sorted(self.bytes["up"].items())}
        return {"bytes_down": down, "bytes_up": up, "bytes_down_total": sum(down.values()),
                "bytes_up_total": sum(up.values()),
                "fedavg_bytes_per_client": protocol.fedavg_bytes_per_client_round(student)}

    def count(self, communication: dict, num_clients: int) -> None:
        """Add a finished round's ``communication`` to the run's totals."""
        for key in ("bytes_down_total", "bytes_up_total"):
            self.totals[key] += communication[key]
        self.totals["fedavg_bytes_total"] += communication["fedavg_bytes_per_client"] * num_clients

    def communication_totals(self, soft_labels_queried: int) -> dict:
        """The run's byte totals for the summary, and the uplink against FedAvg's."""
        return {**self.totals, "soft_labels_queried": soft_labels_queried,
                "uplink_ratio_to_fedavg": self.totals["bytes_up_total"] / (self.totals["fedavg_bytes_total"] / 2)}

    def teacher_columns(self, clients: list[int]) -> dict:
        """The metrics columns of this round's teachers of ``clients``."""
        reports = [self.reports[p] for p in clients]
        return {
            "teacher_mean_accuracy": float(np.mean([t.test_accuracy for t in reports])),
            "teacher_mean_worst_group_accuracy": float(np.mean([t.test_worst_group_accuracy for t in reports])),
            "teachers": [vars(t) for t in reports],
        }
