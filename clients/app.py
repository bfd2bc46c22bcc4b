"""Flower ClientApp: thin handlers that decode a message, call fedkd.local, and encode the reply."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedkd import protocol
from fedkd.local import query_local_teacher, train_local_teacher

STATE_PREFIX = "fedkd."

app = ClientApp()


def partition_id(context: Context) -> int:
    """The node's shard: ``partition-id`` from node config (set by the simulation engine, or by
    ``--node-config`` in a deployment)."""
    if "partition-id" not in context.node_config:
        raise ValueError("node config lacks 'partition-id'; start the SuperNode with --node-config 'partition-id=N'")
    return int(context.node_config["partition-id"])


def _load_state(context: Context) -> dict:
    """The client's models and objective state, one ArrayRecord each under ``fedkd.<name>``."""
    return {key[len(STATE_PREFIX):]: record.to_torch_state_dict()
            for key, record in context.state.items() if key.startswith(STATE_PREFIX)}


def _save_state(context: Context, state: dict) -> None:
    for name, tensors in state.items():
        context.state[STATE_PREFIX + name] = ArrayRecord(tensors)


@app.train("teacher")
def train_teacher(msg: Message, context: Context) -> Message:
    request = protocol.parse_train_request(msg.content)
    state, report = train_local_teacher(request.job, partition_id(context), request.round, _load_state(context))
    _save_state(context, state)
    return Message(protocol.train_reply(report), reply_to=msg)


@app.query("softlabels")
def query_softlabels(msg: Message, context: Context) -> Message:
    request = protocol.parse_query_request(msg.content)
    pid = partition_id(context)
    logits, base = query_local_teacher(request.job, pid, _load_state(context), request.indices, request.with_base,
                                       request.split, request.round)
    return Message(protocol.query_reply(pid, logits, base, request.compression), reply_to=msg)
