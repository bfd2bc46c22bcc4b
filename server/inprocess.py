"""An in-process Grid: delivers each message straight to a ClientApp in this process, one Context per node.

It lets the unchanged round loop run without Ray or a SuperLink (tests, overhead benchmark). Like Flower's
runtimes, it declares the task identity that ``Message`` reads, and turns a client exception into an error
reply. ``TrainedTeacherCache`` lets a study reuse trained teachers across runs whose clients train identically.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedkd import protocol
from fedkd.protocol import STATE_PREFIX
from fedkd.teacher_store import training_job

RUN_ID = 1
SERVER_NODE_ID = 0
CLIENT_EXCEPTION = 100


class InProcessGrid(Grid):
    """``num_nodes`` simulated SuperNodes with node ids ``first_node_id``.. and node config partition-id 0..N-1
    (plus ``state-dir`` when given: where the nodes keep their states between runs, for resume)."""

    def __init__(self, client_app: ClientApp | Callable[[Message, Context], Message], num_nodes: int,
                 state_dir: str | None = None, first_node_id: int = 1) -> None:
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = RUN_ID
        TaskIdentity.node_id = SERVER_NODE_ID
        self.client_app = client_app
        extra = {"state-dir": state_dir} if state_dir else {}
        self.contexts = {
            pid + first_node_id: Context(
                run_id=RUN_ID,
                node_id=pid + first_node_id,
                node_config={"partition-id": pid, "num-partitions": num_nodes, **extra},
                state=RecordDict(),
                run_config={},
            )
            for pid in range(num_nodes)
        }
        self._ids = itertools.count()
        self._replies: dict[str, Message] = {}

    @property
    def run(self):  # noqa: ANN201 - Flower's Run type is internal
        raise AttributeError("the in-process grid has no Flower run")

    def set_run(self, run_id: int) -> None:
        raise AttributeError("the in-process grid serves one fixed run")

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(next(self._ids))
            message.metadata.__dict__["_message_id"] = message_id  # as Flower's grids do on push
            self._replies[message_id] = self._deliver(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        context = self.contexts[message.metadata.dst_node_id]
        try:
            return self.client_app(message, context)
        except Exception as err:  # noqa: BLE001 - mirrors Flower: a client failure becomes an error reply
            return Message(Error(code=CLIENT_EXCEPTION, reason=f"{type(err).__name__}: {err}"), reply_to=message)


class TrainedTeacherCache:
    """A ClientApp wrapper for studies: a teacher-training request whose client job, partition and round were
    already answered in this process gets the stored reply and the stored client state (teacher, ERM base,
    objective state) instead of training again. Client training is seeded by (seed, partition, round) and does
    not depend on the server's aggregator or student, so runs that differ only there share their teachers.
    ``erm_base`` is part of the key unless the teacher objective keeps its base anyway (erm, dfr).

    A soft-label query is answered from the store when the same request (job, round, points, split, base,
    compression) reached a node holding the same trained state: the answer is a function of the two (local
    noise is seeded by seed, partition and round). Queries to a node whose training was not cached run for real.
    """

    def __init__(self, client_app: ClientApp) -> None:
        self.client_app = client_app
        self.hits = 0
        self.misses = 0
        self.query_hits = 0
        self._store: dict[tuple, tuple[dict, RecordDict]] = {}
        self._answers: dict[tuple, RecordDict] = {}
        self._trained: dict[int, tuple] = {}  # node id -> the key of the training its state came from

    def __call__(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type == protocol.QUERY_SOFTLABELS:
            return self._query(message, context)
        if message.metadata.message_type != protocol.TRAIN_TEACHER:
            return self.client_app(message, context)
        request = protocol.parse_train_request(message.content)
        key = (training_job(request.job).training_key(), context.node_config["partition-id"], request.round)
        self._trained.pop(context.node_id, None)
        if key in self._store:
            self._trained[context.node_id] = key
            self.hits += 1
            state, content = self._store[key]
            for name in [k for k in context.state if k.startswith(STATE_PREFIX)]:
                del context.state[name]
            for name, record in state.items():
                context.state[name] = copy.deepcopy(record)
            return Message(copy.deepcopy(content), reply_to=message)
        self.misses += 1
        reply = self.client_app(message, context)
        if not reply.has_error():
            state = {k: copy.deepcopy(v) for k, v in context.state.items() if k.startswith(STATE_PREFIX)}
            self._store[key] = (state, copy.deepcopy(reply.content))
            self._trained[context.node_id] = key
        return reply

    def _query(self, message: Message, context: Context) -> Message:
        trained = self._trained.get(context.node_id)
        if trained is None:
            return self.client_app(message, context)
        request = protocol.parse_query_request(message.content)
        # whether the client keeps an ERM base changes its training (in ``trained``), not how it answers
        compression = (type(request.compression).__name__, sorted(vars(request.compression).items()))
        key = (trained, dataclasses.replace(request.job, erm_base=False).to_yaml(), request.round, request.split,
               request.with_base, repr(compression), hashlib.sha1(request.indices.tobytes()).hexdigest())
        if key in self._answers:
            self.query_hits += 1
            return Message(copy.deepcopy(self._answers[key]), reply_to=message)
        reply = self.client_app(message, context)
        if not reply.has_error():
            self._answers[key] = copy.deepcopy(reply.content)
        return reply
