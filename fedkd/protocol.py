"""The wire contract between the ServerApp and the ClientApps: message types, record keys, payload shapes
and dtypes. Both sides encode and decode only through this module.

server -> client ``train.teacher``      config["job"] (YAML of ClientJob), config["round"], config["run_key"]
                                        (names the run's client checkpoints; "" = the node keeps none)
client -> server                        metrics: TeacherReport fields
server -> client ``query.softlabels``   config["job"], config["round"], config["with_base"], config["split"]
                                        ("transfer"; "val"/"test" for server-side evaluation and the
                                        reliability estimate), config["compression"], config["top_k"],
                                        indices["indices"] int64 [n]
client -> server                        softlabels["logits.<part>"]: the teacher's logits [n, C] encoded by
                                        fedkd.compression (fp32: "logits.values" float32 [n, C]); the same
                                        under "base_logits.<part>" for the ERM base when with_base;
                                        metrics["partition_id"], metrics["num_queried"]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from torch import nn

from fedkd.compression import COMPRESSIONS, Compression, CompressionError
from fedkd.config import ClientJob
from fedkd.validation import parse_client_job

TRAIN_TEACHER = "train.teacher"
QUERY_SOFTLABELS = "query.softlabels"
STATE_PREFIX = "fedkd."  # the keys of a node's context.state that hold the client's models and objective state

CONFIG = "config"
METRICS = "metrics"
INDICES = "indices"
SOFTLABELS = "softlabels"
LOGITS = "logits"
BASE_LOGITS = "base_logits"

INDEX_DTYPE = np.int64
LOGIT_DTYPE = np.float32


class ProtocolError(ValueError):
    """A message does not follow the contract; the text names the record and key."""


@dataclass(frozen=True)
class TrainRequest:
    job: ClientJob
    round: int
    run_key: str = ""


@dataclass(frozen=True)
class QueryRequest:
    job: ClientJob
    round: int
    indices: np.ndarray
    with_base: bool
    split: str
    compression: Compression


@dataclass(frozen=True)
class TeacherReport:
    """What a client says about its teacher after training (all scalars or lists of numbers)."""

    partition_id: int
    num_examples: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    test_worst_group_accuracy: float
    class_counts: list[int]  # under a privacy setting: noisy (dpsgd, when the aggregator needs them) or zeros
    group_counts: list[int]  # under a privacy setting: zeros
    epsilon: float = 0.0  # privacy=dpsgd: the client's example-level ε so far (Opacus); 0 otherwise


@dataclass(frozen=True)
class SoftLabelReply:
    partition_id: int
    logits: np.ndarray
    base_logits: np.ndarray | None


def _record(content: RecordDict, key: str, kind: type) -> object:
    if key not in content:
        raise ProtocolError(f"message lacks the {kind.__name__} {key!r} (has {sorted(content.keys())})")
    record = content[key]
    if not isinstance(record, kind):
        raise ProtocolError(f"record {key!r} is a {type(record).__name__}, expected {kind.__name__}")
    return record


def _job_config(job: ClientJob, server_round: int) -> ConfigRecord:
    return ConfigRecord({"job": job.to_yaml(), "round": server_round})


def _parse_job(content: RecordDict) -> tuple[ClientJob, int]:
    config = _record(content, CONFIG, ConfigRecord)
    try:
        return parse_client_job(str(config["job"])), int(config["round"])
    except (KeyError, TypeError, ValueError) as err:
        raise ProtocolError(f"config record does not hold a valid job and round: {err}") from err


def train_request(job: ClientJob, server_round: int, run_key: str = "") -> RecordDict:
    config = _job_config(job, server_round)
    config["run_key"] = run_key
    return RecordDict({CONFIG: config})


def parse_train_request(content: RecordDict) -> TrainRequest:
    job, server_round = _parse_job(content)
    run_key = str(_record(content, CONFIG, ConfigRecord).get("run_key", ""))
    if run_key and (not run_key.replace("-", "").replace("_", "").isalnum()):
        raise ProtocolError(f"run_key {run_key!r} must be letters, digits, '-' and '_' (it names a folder)")
    return TrainRequest(job=job, round=server_round, run_key=run_key)


def train_reply(report: TeacherReport) -> RecordDict:
    return RecordDict({METRICS: MetricRecord(dataclasses.asdict(report))})


def parse_train_reply(content: RecordDict) -> TeacherReport:
    metrics = _record(content, METRICS, MetricRecord)
    try:
        return TeacherReport(**{f.name: metrics[f.name] for f in dataclasses.fields(TeacherReport)})
    except KeyError as err:
        raise ProtocolError(f"train reply metrics lack {err}") from err


QUERYABLE_SPLITS = ("transfer", "val", "test")


def query_request(job: ClientJob, server_round: int, indices: np.ndarray, with_base: bool = False,
                  split: str = "transfer", compression: str = "fp32", top_k: int = 3) -> RecordDict:
    if split not in QUERYABLE_SPLITS:
        raise ProtocolError(f"split {split!r} cannot be queried; one of {QUERYABLE_SPLITS}")
    array = Array(np.ascontiguousarray(indices, dtype=INDEX_DTYPE))
    config = _job_config(job, server_round)
    config["with_base"] = with_base
    config["split"] = split
    config["compression"] = compression
    config["top_k"] = top_k
    return RecordDict({CONFIG: config, INDICES: ArrayRecord({INDICES: array})})


def parse_query_request(content: RecordDict) -> QueryRequest:
    job, server_round = _parse_job(content)
    indices = _record(content, INDICES, ArrayRecord)[INDICES].numpy()
    if indices.dtype != INDEX_DTYPE or indices.ndim != 1:
        raise ProtocolError(f"indices must be a 1-d {INDEX_DTYPE.__name__} array, got {indices.dtype} {indices.shape}")
    config = _record(content, CONFIG, ConfigRecord)
    split = str(config.get("split", "transfer"))
    if split not in QUERYABLE_SPLITS:
        raise ProtocolError(f"split {split!r} cannot be queried; one of {QUERYABLE_SPLITS}")
    return QueryRequest(job=job, round=server_round, indices=indices, with_base=bool(config.get("with_base", False)),
                        split=split, compression=_compression(config))


def _compression(config: ConfigRecord) -> Compression:
    name = str(config.get("compression", "fp32"))
    if name not in COMPRESSIONS:
        raise ProtocolError(f"unknown soft-label compression {name!r}; one of {sorted(COMPRESSIONS)}")
    return COMPRESSIONS[name](int(config.get("top_k", 3)))


def query_reply(partition_id: int, logits: np.ndarray, base_logits: np.ndarray | None = None,
                compression: Compression | None = None) -> RecordDict:
    compression = compression or COMPRESSIONS["fp32"]()
    arrays = {}
    for key, values in ((LOGITS, logits), (BASE_LOGITS, base_logits)):
        if values is not None:
            arrays.update({f"{key}.{part}": Array(np.ascontiguousarray(a))
                           for part, a in compression.encode(values).items()})
    return RecordDict(
        {
            SOFTLABELS: ArrayRecord(arrays),
            METRICS: MetricRecord({"partition_id": partition_id, "num_queried": int(logits.shape[0])}),
        }
    )


def _logits(record: ArrayRecord, key: str, num_queried: int, num_classes: int,
            compression: Compression) -> np.ndarray:
    parts = {name[len(key) + 1:]: record[name].numpy() for name in record if name.startswith(key + ".")}
    if not parts:
        raise ProtocolError(f"soft-label record lacks {key!r} (has {sorted(record)})")
    try:
        logits = compression.decode(parts, num_classes)
    except CompressionError as err:
        raise ProtocolError(f"{key}: {err}") from err
    if logits.shape != (num_queried, num_classes) or logits.dtype != LOGIT_DTYPE:
        raise ProtocolError(
            f"{key} must decode to {LOGIT_DTYPE.__name__} [{num_queried}, {num_classes}], "
            f"got {logits.dtype} {list(logits.shape)}"
        )
    return logits


def parse_query_reply(content: RecordDict, num_queried: int, num_classes: int, with_base: bool = False,
                      compression: Compression | None = None) -> SoftLabelReply:
    compression = compression or COMPRESSIONS["fp32"]()
    record = _record(content, SOFTLABELS, ArrayRecord)
    metrics = _record(content, METRICS, MetricRecord)
    return SoftLabelReply(
        partition_id=int(metrics["partition_id"]),
        logits=_logits(record, LOGITS, num_queried, num_classes, compression),
        base_logits=_logits(record, BASE_LOGITS, num_queried, num_classes, compression) if with_base else None,
    )


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's content (its RecordDict) in Flower's protobuf wire format."""
    return recorddict_to_proto(content).ByteSize()


def fedavg_bytes_per_client_round(model: nn.Module) -> int:
    """What one client would move in one FedAvg round of ``model``, for comparison: its weights down, its update
    up."""
    return 2 * payload_bytes(RecordDict({"arrays": ArrayRecord(model.state_dict())}))
