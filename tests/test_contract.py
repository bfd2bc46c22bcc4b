"""The wire contract between clients/ and server/: encoded by one side, decoded by the other, through the real
ClientApp handlers on an in-process grid (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from clients.app import _load_state, client_threads
from clients.app import app as client_app
from fedkd import protocol
from fedkd.compression import COMPRESSIONS
from fedkd.data import federated_data
from fedkd.local import query_local_teacher
from server.inprocess import InProcessGrid


@pytest.fixture
def grid_and_job(fast_config):
    grid = InProcessGrid(client_app, fast_config.federation.num_clients)
    return grid, fast_config.client_job()


def _send(grid, message_type, content):
    messages = [Message(content, dst_node_id=node, message_type=message_type) for node in grid.get_node_ids()]
    return list(grid.send_and_receive(messages))


def test_train_then_query_round_trip(grid_and_job):
    grid, job = grid_and_job
    data = federated_data(job.dataset, job.partition, job.num_clients, job.seed)
    replies = _send(grid, protocol.TRAIN_TEACHER, protocol.train_request(job, 1))
    # a real client's reply keeps the value checks the server applies (sizes known, every value in range)
    reports = sorted((protocol.parse_train_reply(r.content, data.benchmark.num_classes, data.benchmark.num_groups,
                                                 job.num_clients) for r in replies), key=lambda r: r.partition_id)
    assert [r.partition_id for r in reports] == [0, 1, 2]
    assert [r.num_examples for r in reports] == [len(p) for p in data.partitions]
    assert all(sum(r.class_counts) == r.num_examples == sum(r.group_counts) for r in reports)
    assert all(len(r.group_counts) == data.benchmark.num_groups for r in reports)

    indices = np.array([5, 0, 17, 3], dtype=np.int64)
    replies = _send(grid, protocol.QUERY_SOFTLABELS, protocol.query_request(job, 1, indices))
    for reply in replies:
        answer = protocol.parse_query_reply(reply.content, len(indices), data.benchmark.num_classes,
                                            num_partitions=job.num_clients)
        assert answer.logits.dtype == np.float32 and answer.logits.shape == (4, 10)
        # the same teacher, queried directly in fedkd on the client's thread count, gives the same logits
        state = _load_state(grid.contexts[reply.metadata.src_node_id])
        with client_threads(job.threads):
            direct, _ = query_local_teacher(job, answer.partition_id, state, indices)
        np.testing.assert_array_equal(answer.logits, direct)


def test_teacher_state_persists_across_rounds(grid_and_job):
    grid, job = grid_and_job
    _send(grid, protocol.TRAIN_TEACHER, protocol.train_request(job, 1))
    first = grid.contexts[1].state["fedkd.teacher"].to_torch_state_dict()
    _send(grid, protocol.TRAIN_TEACHER, protocol.train_request(job, 2))
    second = grid.contexts[1].state["fedkd.teacher"].to_torch_state_dict()
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_query_before_training_is_an_error_reply(grid_and_job):
    grid, job = grid_and_job
    replies = _send(grid, protocol.QUERY_SOFTLABELS, protocol.query_request(job, 1, np.arange(3)))
    assert all(r.has_error() and "before it trained" in r.error.reason for r in replies)


def test_malformed_request_names_the_missing_record(grid_and_job):
    grid, _ = grid_and_job
    replies = _send(grid, protocol.TRAIN_TEACHER, RecordDict({"cfg": ConfigRecord({"x": 1})}))
    assert all(r.has_error() and "'config'" in r.error.reason for r in replies)


def test_reply_with_wrong_shape_or_dtype_is_refused():
    good = protocol.query_reply(0, np.zeros((4, 10), dtype=np.float32))
    assert protocol.parse_query_reply(good, 4, 10).logits.shape == (4, 10)
    with pytest.raises(protocol.ProtocolError, match=r"\[4, 10\]"):
        protocol.parse_query_reply(protocol.query_reply(0, np.zeros((4, 9), dtype=np.float32)), 4, 10)
    with pytest.raises(protocol.ProtocolError, match="lacks"):
        protocol.parse_train_reply(RecordDict())


def test_client_encodes_with_the_requested_compression(grid_and_job):
    grid, job = grid_and_job
    _send(grid, protocol.TRAIN_TEACHER, protocol.train_request(job, 1))
    indices = np.arange(6, dtype=np.int64)
    plain = {r.metadata.src_node_id: protocol.parse_query_reply(r.content, 6, 10).logits
             for r in _send(grid, protocol.QUERY_SOFTLABELS, protocol.query_request(job, 1, indices))}
    replies = _send(grid, protocol.QUERY_SOFTLABELS,
                    protocol.query_request(job, 1, indices, compression="topk", top_k=2))
    for reply in replies:
        assert sorted(reply.content["softlabels"].keys()) == ["logits.classes", "logits.log_probs"]
        restored = protocol.parse_query_reply(reply.content, 6, 10, compression=COMPRESSIONS["topk"](2)).logits
        top2 = np.argsort(-plain[reply.metadata.src_node_id], 1)[:, :2]
        assert np.array_equal(np.sort(np.argsort(-restored, 1)[:, :2], 1), np.sort(top2, 1))
    unknown = protocol.query_request(job, 1, indices)
    unknown["config"]["compression"] = "zip"
    assert all(r.has_error() and "zip" in r.error.reason for r in _send(grid, protocol.QUERY_SOFTLABELS, unknown))
