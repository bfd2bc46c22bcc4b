"""A client's science: rebuild its shard, train its teacher (and ERM base), answer soft-label queries.
No Flower here: the ClientApp stores the returned state dicts in the node's state between messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedkd.accounting import dpsgd_history_epsilon
from fedkd.config import ClientJob, ClientPrivacy
from fedkd.data import Benchmark
from fedkd.data.cache import cached_federated_data
from fedkd.device import cpu_state, resolve_device
from fedkd.metrics import accuracy, group_counts, worst_group_accuracy
from fedkd.models import build_model
from fedkd.noise import local_noise, noisy_class_counts
from fedkd.protocol import TeacherReport
from fedkd.teachers import DPSGD_HISTORY, TeacherModels, refit_on_trained_base, train_teacher
from fedkd.training import predict_logits

RELEASED_COUNTS = "released_class_counts"
LocalState = dict[str, dict[str, torch.Tensor]]  # "teacher", "base" (state dicts), "extra" (objective state)


def _new_model(job: ClientJob, bench: Benchmark, partition_id: int) -> torch.nn.Module:
    """A fresh teacher on the job's device (``auto`` resolved by this process: the GPU Ray gave it, or none)."""
    model = build_model(job.teacher.arch, bench.input_shape, bench.num_classes, seed=job.seed * 1000 + partition_id,
                        pretrained_path=job.teacher.pretrained_path)
    return model.to(resolve_device(job.device))


def _restore(job: ClientJob, bench: Benchmark, partition_id: int, state: LocalState | None) -> TeacherModels:
    state = state or {}
    models = TeacherModels(teacher=_new_model(job, bench, partition_id), base=None, extra=dict(state.get("extra", {})))
    if "teacher" in state:
        models.teacher.load_state_dict(state["teacher"])
    if "base" in state:
        models.base = _new_model(job, bench, partition_id)
        models.base.load_state_dict(state["base"])
    return models


def _state(models: TeacherModels) -> LocalState:
    state = {"teacher": cpu_state(models.teacher), "extra": dict(models.extra)}
    if models.base is not None:
        state["base"] = cpu_state(models.base)
    return state


def train_local_teacher(
    job: ClientJob, partition_id: int, server_round: int, state: LocalState | None, data_cache: Path | None = None,
    trained_base: tuple[dict[str, torch.Tensor], float] | None = None,
) -> tuple[LocalState, TeacherReport]:
    """One round of local training for ``partition_id``; the teacher is evaluated on its shard and on the test
    split (an evaluation-only view every node can build). ``data_cache``: the node's folder for its built data
    (``fedkd.data.cache``), None to build it in memory. ``trained_base``: for a DFR teacher on public data, its
    ERM base already trained this round (its ERM twin's teacher, ``fedkd.teacher_store.erm_twin``) and that
    training's loss: only the head is refitted, with the same result."""
    if not 0 <= partition_id < job.num_clients:
        raise ValueError(
            f"this node's partition-id {partition_id} is outside 0..{job.num_clients - 1}: a federation of "
            f"federation.num_clients={job.num_clients} needs node config partition-id in that range"
        )
    data = cached_federated_data(data_cache, job.dataset, job.partition, job.num_clients, job.seed)
    bench, shard = data.benchmark, data.shard(partition_id)
    models = _restore(job, bench, partition_id, state)
    generator = np.random.default_rng([job.seed, partition_id, server_round])
    torch.manual_seed(job.seed * 7919 + partition_id * 104729 + server_round)
    if trained_base is None:
        loss = train_teacher(models, shard, bench.num_classes, bench.num_groups, job.teacher, job.erm_base,
                             generator, lambda: _new_model(job, bench, partition_id), job.privacy, public=bench["val"])
    else:
        models.base = _new_model(job, bench, partition_id)
        models.base.load_state_dict(trained_base[0])
        loss = refit_on_trained_base(models, shard, bench.num_classes, bench.num_groups, job.teacher, trained_base[1],
                                     generator, bench["val"])
    class_counts = np.bincount(shard.y, minlength=bench.num_classes)
    group_counts_ = group_counts(shard.g, bench.num_groups)
    if job.privacy.withhold_statistics:
        class_counts, group_counts_ = _released_counts(models, class_counts, job, partition_id), [0] * bench.num_groups
    train_pred = predict_logits(models.teacher, shard.x).argmax(1).numpy()
    test = bench["test"]
    test_pred = predict_logits(models.teacher, test.x).argmax(1).numpy()
    report = TeacherReport(
        partition_id=partition_id,
        num_examples=len(shard),
        train_loss=loss,
        train_accuracy=accuracy(train_pred, shard.y),
        test_accuracy=accuracy(test_pred, test.y),
        test_worst_group_accuracy=worst_group_accuracy(test_pred, test.y, test.g),
        class_counts=[int(c) for c in class_counts],
        group_counts=group_counts_,
        epsilon=_client_epsilon(models, job.privacy),
    )
    return _state(models), report


def _released_counts(models: TeacherModels, counts: np.ndarray, job: ClientJob, partition_id: int) -> np.ndarray:
    """Under a privacy setting a client sends no exact statistic of its shard: its class counts go out once with
    Gaussian noise (σ = ``count_noise``, accounted in its ε) when the aggregator needs them, else as zeros; the
    same noisy counts are sent again every round (a repeat costs nothing)."""
    if not job.privacy.count_noise > 0:
        return np.zeros_like(counts)
    if RELEASED_COUNTS not in models.extra:
        rng = np.random.default_rng([job.seed, partition_id, 99])
        models.extra[RELEASED_COUNTS] = torch.from_numpy(noisy_class_counts(counts, job.privacy.count_noise, rng))
    return models.extra[RELEASED_COUNTS].numpy()


def _client_epsilon(models: TeacherModels, privacy: ClientPrivacy) -> float:
    """The client's example-level ε so far under DP-SGD (Opacus' RDP accountant history, plus the noisy class
    counts if it sent them); 0 when it trains without DP-SGD."""
    if not privacy.dp_sgd or DPSGD_HISTORY not in models.extra:
        return 0.0
    count_noise = privacy.count_noise if RELEASED_COUNTS in models.extra else 0.0
    return dpsgd_history_epsilon(models.extra[DPSGD_HISTORY].tolist(), privacy.delta, count_noise)


def query_local_teacher(
    job: ClientJob, partition_id: int, state: LocalState | None, indices: np.ndarray, with_base: bool = False,
    split: str = "transfer", server_round: int = 0, data_cache: Path | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The teacher's logits [n, C] on the requested points of ``split`` (the public transfer pool, or the
    server's val/test views every node can build), and its ERM base's when asked; under local noise both are
    released with the client's own noise (``fedkd.noise.local_noise``)."""
    if not state or "teacher" not in state:
        raise RuntimeError(f"client {partition_id} was asked for soft labels before it trained a teacher")
    if with_base and "base" not in state:
        raise RuntimeError(f"client {partition_id} was asked for its ERM base's soft labels but keeps no base "
                           "(the train request did not ask for one)")
    bench = cached_federated_data(data_cache, job.dataset, job.partition, job.num_clients, job.seed).benchmark
    points = bench[split]
    if len(indices) and (indices.min() < 0 or indices.max() >= len(points)):
        raise ValueError(f"{split} indices must lie in 0..{len(points) - 1}")
    models = _restore(job, bench, partition_id, state)
    x = points.x[indices]
    logits = predict_logits(models.teacher, x).numpy().astype(np.float32)
    base = predict_logits(models.base, x).numpy().astype(np.float32) if with_base else None
    if job.privacy.noise_answers:
        if split != "transfer":
            raise ValueError(f"under privacy={job.privacy.name} a client answers only transfer-pool queries, not "
                             f"{split!r}")
        noise = torch.Generator().manual_seed(int(np.random.SeedSequence([job.seed, partition_id, server_round, 7])
                                                  .generate_state(1)[0]))
        logits = local_noise(logits, job.privacy, job.privacy.temperature, noise)
        base = None if base is None else local_noise(base, job.privacy, job.privacy.temperature, noise)
    return logits, base
