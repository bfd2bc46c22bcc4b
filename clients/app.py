"""Flower ClientApp: thin handlers that decode a message, call fedkd.local, and encode the reply.

A handler that raises becomes a Flower error reply (the server logs it with the client's id); the node's
teacher lives in ``context.state`` and, when the node has a state folder, on disk after every round, so that a
restarted node or a resumed run continues from it. A node with a teacher store (fedkd.teacher_store) takes a
teacher trained identically before from it instead of training again."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedkd import protocol
from fedkd.checkpoint import CLIENT_STATE_ENV, ClientStateStore
from fedkd.console import flower_records_once
from fedkd.data.cache import DATA_CACHE_ENV
from fedkd.local import query_local_teacher, train_local_teacher
from fedkd.protocol import STATE_PREFIX, TeacherReport
from fedkd.teacher_store import TeacherStore, answer_identity, erm_twin, teacher_identity

app = ClientApp()
STORED_TEACHER = "teacher-store"  # context.state: the store identity of the teacher this node holds, if any
flower_records_once()


class NodeConfigError(ValueError):
    """The SuperNode's ``--node-config`` does not describe a shard of this federation."""


def check_partition(config: Mapping[str, object], num_clients: int) -> int:
    """The shard a node config names: ``partition-id`` in 0..N-1 and ``num-partitions`` equal to the run's
    federation.num_clients. Shared by the ClientApp (at run time) and scripts/deploy_local.py (before any process
    starts); the message completes "node config ..."."""
    for key in ("partition-id", "num-partitions"):
        if key not in config:
            raise NodeConfigError(f"lacks {key!r}; start the SuperNode with "
                                  f"--node-config 'partition-id=<0..{num_clients - 1}> num-partitions={num_clients}'")
    pid, num_partitions = config["partition-id"], config["num-partitions"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (pid, num_partitions)):
        raise NodeConfigError(f"partition-id={pid!r} / num-partitions={num_partitions!r}: must be whole numbers")
    if num_partitions != num_clients:
        raise NodeConfigError(f"num-partitions={num_partitions} but the run has federation.num_clients="
                              f"{num_clients}: start the nodes with num-partitions={num_clients}")
    if not 0 <= pid < num_partitions:
        raise NodeConfigError(f"partition-id={pid} is outside 0..{num_partitions - 1} "
                              f"(num-partitions={num_partitions})")
    return pid


def partition_id(context: Context, num_clients: int) -> int:
    """The node's shard: ``partition-id`` from node config (set by the simulation engine, or by ``--node-config``
    in a deployment), checked against ``num-partitions`` and the run's federation.num_clients."""
    try:
        return check_partition(context.node_config, num_clients)
    except NodeConfigError as err:
        raise NodeConfigError(f"node config {err}") from None


def _load_state(context: Context) -> dict:
    """The client's models and objective state, one ArrayRecord each under ``fedkd.<name>``."""
    return {key[len(STATE_PREFIX):]: record.to_torch_state_dict()
            for key, record in context.state.items() if key.startswith(STATE_PREFIX)}


def _save_state(context: Context, state: dict) -> None:
    for name, tensors in state.items():
        context.state[STATE_PREFIX + name] = ArrayRecord(tensors)


def _saved_state(context: Context, request: protocol.TrainRequest, pid: int) -> dict:
    """After a restart (a resumed run, a restarted node) the previous round's state comes from the node's folder;
    training a fresh teacher in its place would silently change the run."""
    store = ClientStateStore.for_node(context.node_config)
    if store is None or not request.run_key:
        raise RuntimeError(f"partition {pid} holds no teacher for round {request.round - 1} (the node restarted or "
                           f"the run was resumed) and keeps no state on disk: give the node a state folder "
                           f"(--node-config 'state-dir=<folder>' or {CLIENT_STATE_ENV})")
    return store.load(request.run_key, pid, request.round - 1)


def data_cache_dir(context: Context) -> Path | None:
    """Where the node keeps its built data between messages (``fedkd.data.cache``): node config
    ``data-cache-dir`` (``make deploy-local`` gives its nodes one shared folder) or $FEDKD_DATA_CACHE_DIR; None:
    build in memory, once per process (enough where processes outlive a message, as Ray's actors do)."""
    folder = context.node_config.get("data-cache-dir") or os.environ.get(DATA_CACHE_ENV)
    return Path(str(folder)) if folder else None


@contextlib.contextmanager
def client_threads(threads: int) -> Iterator[None]:
    """Run the client's work on ``threads`` torch threads (the job's federation.client_cpus), then restore the
    process's setting: parallel reductions sum in an order that depends on the thread count, so this is what
    makes a client compute the same bits in a Ray worker, a SuperNode's process and the in-process grid."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@app.train("teacher")
def train_teacher(msg: Message, context: Context) -> Message:
    request = protocol.parse_train_request(msg.content)
    pid = partition_id(context, request.job.num_clients)

    shared = TeacherStore.for_node(context.node_config)

    def train() -> tuple[dict, TeacherReport]:
        state = _load_state(context)
        if not state and request.round > 1:
            state = _saved_state(context, request, pid)
        twin = erm_twin(request.job) if shared is not None and (not state or "base" in state) else None
        with client_threads(request.job.threads):
            if twin is None:
                return train_local_teacher(request.job, pid, request.round, state, data_cache_dir(context))

            def train_base() -> tuple[dict, TeacherReport]:  # the twin's previous teacher is this job's base
                previous = {"teacher": state["base"], "extra": {}} if state else None
                return train_local_teacher(twin, pid, request.round, previous, data_cache_dir(context))

            base, base_report, _ = shared.trained(teacher_identity(twin, pid, request.round), train_base,
                                                  dataclasses.asdict, lambda fields: TeacherReport(**fields))
            return train_local_teacher(request.job, pid, request.round, state, data_cache_dir(context),
                                       trained_base=(base["teacher"], base_report.train_loss))

    if STORED_TEACHER in context.state:
        del context.state[STORED_TEACHER]
    if shared is None:
        state, report = train()
    else:
        identity = teacher_identity(request.job, pid, request.round)
        state, report, _ = shared.trained(identity, train, dataclasses.asdict, lambda fields: TeacherReport(**fields))
        context.state[STORED_TEACHER] = ConfigRecord({"identity": identity})
    _save_state(context, state)
    store = ClientStateStore.for_node(context.node_config)
    if store is not None and request.run_key:
        store.save(request.run_key, pid, request.round, state)
    return Message(protocol.train_reply(report), reply_to=msg)


@app.query("softlabels")
def query_softlabels(msg: Message, context: Context) -> Message:
    request = protocol.parse_query_request(msg.content)
    pid = partition_id(context, request.job.num_clients)

    def answer() -> tuple[np.ndarray, np.ndarray | None]:
        with client_threads(request.job.threads):
            return query_local_teacher(request.job, pid, _load_state(context), request.indices, request.with_base,
                                       request.split, request.round, data_cache_dir(context))

    shared = TeacherStore.for_node(context.node_config)
    if shared is None or STORED_TEACHER not in context.state:
        logits, base = answer()
    else:
        teacher = str(context.state[STORED_TEACHER]["identity"])
        logits, base = shared.answers(answer_identity(teacher, request.job, request.split, request.round,
                                                      request.with_base, request.indices), answer)
    return Message(protocol.query_reply(pid, logits, base, request.compression), reply_to=msg)
