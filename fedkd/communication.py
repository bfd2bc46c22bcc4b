"""Communication accounting (issue 4): bytes of the actual message payloads as Flower serialises them, and the
figure FedAvg of the student's weights would cost, for comparison."""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from torch import nn

FEDAVG_RECORD = "arrays"


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's content (its RecordDict) in Flower's protobuf wire format."""
    return recorddict_to_proto(content).ByteSize()


def fedavg_bytes_per_client_round(model: nn.Module) -> int:
    """What one client would move in one FedAvg round of ``model``: its weights down, and its update up."""
    return 2 * payload_bytes(RecordDict({FEDAVG_RECORD: ArrayRecord(model.state_dict())}))
