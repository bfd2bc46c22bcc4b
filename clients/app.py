"""Flower ClientApp: thin handlers that decode a message, call fedkd.local, and encode the reply."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedkd import protocol
from fedkd.local import query_local_teacher, train_local_teacher

TEACHER_STATE = "teacher"

app = ClientApp()


def partition_id(context: Context) -> int:
    """The node's shard: ``partition-id`` from node config (set by the simulation engine, or by
    ``--node-config`` in a deployment)."""
    if "partition-id" not in context.node_config:
        raise ValueError("node config lacks 'partition-id'; start the SuperNode with --node-config 'partition-id=N'")
    return int(context.node_config["partition-id"])


def _teacher_state(context: Context) -> dict | None:
    record = context.state.get(TEACHER_STATE)
    return None if record is None else record.to_torch_state_dict()


@app.train("teacher")
def train_teacher(msg: Message, context: Context) -> Message:
    request = protocol.parse_train_request(msg.content)
    state, report = train_local_teacher(request.job, partition_id(context), request.round, _teacher_state(context))
    context.state[TEACHER_STATE] = ArrayRecord(state)
    return Message(protocol.train_reply(report), reply_to=msg)


@app.query("softlabels")
def query_softlabels(msg: Message, context: Context) -> Message:
    request = protocol.parse_query_request(msg.content)
    pid = partition_id(context)
    logits = query_local_teacher(request.job, pid, _teacher_state(context), request.indices)
    return Message(protocol.query_reply(pid, logits), reply_to=msg)
