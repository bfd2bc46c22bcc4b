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

The server trusts a reply no further than this contract: ``parse_train_reply`` and ``parse_query_reply`` check
every value a client sends (type, shape, finite, in range) and raise ``ProtocolError`` naming the field and the
bad value, so that one faulty or hostile client cannot poison the aggregate.
"""

from __future__ import annotations

import dataclasses
import math
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
# The largest |logit| a reply may carry once decoded. Trained networks stay within a few hundred, top-k's missing
# classes are restored at fedkd.compression.MISSING_LOGIT (-1e4) and local DP's zero probabilities at τ·ln 1e-12;
# beyond 1e6 a teacher is broken or hostile, and the bound keeps squares and sums over many teachers and points
# finite in float32.
MAX_ABS_LOGIT = 1.0e6
INTEGER_LIMIT = 2**63  # integers travel as sint64 (and torch.tensor takes them): every count is below this


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


def _metric(metrics: MetricRecord, where: str, name: str) -> object:
    if name not in metrics:
        raise ProtocolError(f"{where} metrics lack {name!r} (have {sorted(metrics.keys())})")
    return metrics[name]


def _integer(where: str, name: str, value: object, limit: int | None = None) -> int:
    """``value`` if it is an integer in [0, ``limit``) (``limit`` None: [0, ``INTEGER_LIMIT``))."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{where}: {name}={value!r} must be an integer")
    limit = INTEGER_LIMIT if limit is None else limit
    if not 0 <= value < limit:
        bound = f"in [0, {limit})" if limit < INTEGER_LIMIT else ">= 0 and below 2^63"
        raise ProtocolError(f"{where}: {name}={value!r} must be {bound}")
    return value


def _real(where: str, name: str, value: object, upper: float = math.inf) -> float:
    """``value`` as a float if it is a finite number in [0, ``upper``]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{where}: {name}={value!r} must be a number")
    if not (math.isfinite(value) and 0 <= value <= upper):
        bound = f"in [0, {upper:g}]" if math.isfinite(upper) else ">= 0"
        raise ProtocolError(f"{where}: {name}={value!r} must be a finite number {bound}")
    return float(value)


def _counts(where: str, name: str, values: object, length: int | None) -> list[int]:
    """``values`` if it is a list of ``length`` non-negative integers (``length`` None: any length). Under a
    privacy setting counts are noisy (rounded, floored at 0) or zeros: still non-negative integers."""
    if not isinstance(values, list):
        raise ProtocolError(f"{where}: {name}={values!r} must be a list of integers")
    if length is not None and len(values) != length:
        raise ProtocolError(f"{where}: {name} has {len(values)} entries, expected {length}")
    return [_integer(where, f"{name}[{i}]", v) for i, v in enumerate(values)]


def parse_train_reply(content: RecordDict, num_classes: int | None = None, num_groups: int | None = None,
                      num_partitions: int | None = None) -> TeacherReport:
    """The client's ``TeacherReport``, every value checked: ``partition_id`` in [0, ``num_partitions``), counts of
    ``num_classes`` / ``num_groups`` non-negative integers, accuracies in [0, 1], loss and ε finite and >= 0
    (a size left None is not checked)."""
    where = "train reply"
    metrics = _record(content, METRICS, MetricRecord)
    values = {f.name: _metric(metrics, where, f.name) for f in dataclasses.fields(TeacherReport)}
    return TeacherReport(
        partition_id=_integer(where, "partition_id", values["partition_id"], num_partitions),
        num_examples=_integer(where, "num_examples", values["num_examples"]),
        train_loss=_real(where, "train_loss", values["train_loss"]),
        train_accuracy=_real(where, "train_accuracy", values["train_accuracy"], 1.0),
        test_accuracy=_real(where, "test_accuracy", values["test_accuracy"], 1.0),
        test_worst_group_accuracy=_real(where, "test_worst_group_accuracy", values["test_worst_group_accuracy"],
                                        1.0),
        class_counts=_counts(where, "class_counts", values["class_counts"], num_classes),
        group_counts=_counts(where, "group_counts", values["group_counts"], num_groups),
        epsilon=_real(where, "epsilon", values["epsilon"]),
    )


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
    _check_logit_values(key, logits)
    return logits


def _check_logit_values(key: str, logits: np.ndarray) -> None:
    """Decoded logits must be finite and within ±``MAX_ABS_LOGIT``; the error names the first bad value."""
    for bad, what in ((~np.isfinite(logits), "not finite"),
                      (np.abs(logits) > MAX_ABS_LOGIT, f"beyond ±{MAX_ABS_LOGIT:g} (MAX_ABS_LOGIT)")):
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ProtocolError(f"{key}: {int(bad.sum())} of {logits.size} values are {what}, the first "
                                f"{float(logits[first]):g} at {list(first)}")


def parse_query_reply(content: RecordDict, num_queried: int, num_classes: int, with_base: bool = False,
                      compression: Compression | None = None, num_partitions: int | None = None) -> SoftLabelReply:
    """The client's soft labels on the ``num_queried`` points asked, checked: ``partition_id`` in [0,
    ``num_partitions``) (None: >= 0), ``num_queried`` as asked, (base) logits [n, C] finite and bounded."""
    where = "query reply"
    compression = compression or COMPRESSIONS["fp32"]()
    record = _record(content, SOFTLABELS, ArrayRecord)
    metrics = _record(content, METRICS, MetricRecord)
    partition = _integer(where, "partition_id", _metric(metrics, where, "partition_id"), num_partitions)
    answered = _metric(metrics, where, "num_queried")
    if isinstance(answered, bool) or not isinstance(answered, int) or answered != num_queried:
        raise ProtocolError(f"{where}: num_queried={answered!r} but {num_queried} points were asked")
    return SoftLabelReply(
        partition_id=partition,
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
