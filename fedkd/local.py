"""A client's science: rebuild its shard, train its teacher, answer soft-label queries (no Flower here)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from fedkd.config import ClientJob
from fedkd.data import federated_data
from fedkd.metrics import accuracy, group_counts, worst_group_accuracy
from fedkd.models import build_model
from fedkd.protocol import TeacherReport
from fedkd.teachers import train_teacher
from fedkd.training import predict_logits


def _teacher(job: ClientJob, partition_id: int, state: dict | None) -> torch.nn.Module:
    bench = federated_data(job.dataset, job.partition, job.num_clients, job.seed).benchmark
    model = build_model(job.teacher.arch, bench.input_shape, bench.num_classes, seed=job.seed * 1000 + partition_id)
    if state is not None:
        model.load_state_dict(state)
    return model

def train_local_teacher(
    job: ClientJob, partition_id: int, server_round: int, state: dict | None
) -> tuple[OrderedDict, TeacherReport]:
    """Train (continue training) the teacher of ``partition_id`` for one round; evaluate it on its shard and
    on the test split (an evaluation-only view every node can build)."""
    if not 0 <= partition_id < job.num_clients:
        raise ValueError(
            f"this node's partition-id {partition_id} is outside 0..{job.num_clients - 1}: a federation of "
            f"federation.num_clients={job.num_clients} needs node config partition-id in that range"
        )
    data = federated_data(job.dataset, job.partition, job.num_clients, job.seed)
    bench, shard = data.benchmark, data.shard(partition_id)
    model = _teacher(job, partition_id, state)
    generator = np.random.default_rng([job.seed, partition_id, server_round])
    torch.manual_seed(job.seed * 7919 + partition_id * 104729 + server_round)
    loss = train_teacher(model, shard, bench.num_classes, bench.num_groups, job.teacher, generator)
    train_pred = predict_logits(model, shard.x).argmax(1).numpy()
    test = bench["test"]
    test_pred = predict_logits(model, test.x).argmax(1).numpy()
    report = TeacherReport(
        partition_id=partition_id,
        num_examples=len(shard),
        train_loss=loss,
        train_accuracy=accuracy(train_pred, shard.y),
        test_accuracy=accuracy(test_pred, test.y),
        test_worst_group_accuracy=worst_group_accuracy(test_pred, test.y, test.g),
        class_counts=np.bincount(shard.y, minlength=bench.num_classes).tolist(),
        group_counts=group_counts(shard.g, bench.num_groups),
    )
    return model.state_dict(), report

def query_local_teacher(job: ClientJob, partition_id: int, state: dict | None, indices: np.ndarray) -> np.ndarray:
    """The teacher's logits [n, C] on the requested transfer points."""
    if state is None:
        raise RuntimeError(f"client {partition_id} was asked for soft labels before it trained a teacher")
    transfer = federated_data(job.dataset, job.partition, job.num_clients, job.seed).benchmark["transfer"]
    if len(indices) and (indices.min() < 0 or indices.max() >= len(transfer)):
        raise ValueError(f"transfer indices must lie in 0..{len(transfer) - 1}")
    model = _teacher(job, partition_id, state)
    return predict_logits(model, transfer.x[indices]).numpy().astype(np.float32)
