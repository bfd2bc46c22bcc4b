"""Query strategies (DepRound, RAD, margin, entropy), the soft-label pool, compression and byte accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedkd import protocol
from fedkd.compression import COMPRESSIONS, CompressionError
from fedkd.config import QueryConfig
from fedkd.query import (
    QUERY_STRATEGIES,
    QueryContext,
    SoftLabelPool,
    dep_round,
    inclusion_probabilities,
    rad_distribution,
)


def test_dep_round_draws_exactly_b_distinct_points_with_the_right_marginals():
    pi = np.array([0.9, 0.75, 0.5, 0.35, 0.2, 0.15, 0.1, 0.05])  # sums to 3
    rng = np.random.default_rng(0)
    draws = 20_000
    counts = np.zeros(len(pi))
    for _ in range(draws):
        chosen = dep_round(pi, rng)
        assert len(chosen) == 3 and len(set(chosen.tolist())) == 3
        counts[chosen] += 1
    standard_error = np.sqrt(pi * (1 - pi) / draws)
    assert np.all(np.abs(counts / draws - pi) < 4 * standard_error + 1e-9), counts / draws


def test_dep_round_keeps_certain_points_and_refuses_a_non_integer_total():
    chosen = dep_round(np.array([1.0, 0.0, 1.0, 0.0]), np.random.default_rng(1))
    assert chosen.tolist() == [0, 2]
    with pytest.raises(ValueError, match="sum to an integer"):
        dep_round(np.array([0.5, 0.2]), np.random.default_rng(1))


def test_inclusion_probabilities_scale_then_cap_at_one():
    assert np.allclose(inclusion_probabilities(np.array([0.5, 0.3, 0.1, 0.1]), 2), [1.0, 0.6, 0.2, 0.2])
    # 2 * 0.7 > 1: the first point is certain, the remaining budget 1 spreads over the others by p
    assert np.allclose(inclusion_probabilities(np.array([0.7, 0.1, 0.1, 0.1]), 2), [1.0, 1 / 3, 1 / 3, 1 / 3])


def test_rad_distribution_on_a_hand_made_example():
    gains = np.array([0.9, 0.8, 0.5, 0.1])
    # m = 1: (k - 1) / sum_{i<=k} 1/g_i is 0.4235 (k=2), 0.4586 (k=3), 0.2089 (k=4): support of 3
    p, k = rad_distribution(gains, num_wrong=1)
    inverse = np.array([1 / 0.9, 1 / 0.8, 1 / 0.5])
    assert k == 3 and np.allclose(p, [*(inverse / inverse.sum()), 0.0])
    assert np.allclose(p[:3] * gains[:3], p[0] * gains[0])  # p_i g_i equalised on the support
    # m = 0: the single best point (value 0.9) beats any spread, unless b = 2 points must be drawable
    assert np.allclose(rad_distribution(gains, 0)[0], [1, 0, 0, 0])
    p, k = rad_distribution(gains, 0, min_support=2)
    both = 1 / 0.9 + 1 / 0.8
    assert k == 2 and np.allclose(p, [(1 / 0.9) / both, (1 / 0.8) / both, 0, 0])


def _cfg(name: str) -> QueryConfig:
    return QUERY_STRATEGIES.config(name, per_round=2)


def test_margin_and_entropy_pick_the_uncertain_points():
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 0.0, 0.0], [3.0, 2.99, -5.0], [0.0, 4.0, 0.0]])
    candidates = np.array([10, 11, 12, 13, 14])
    ctx = QueryContext(student_logits=logits, teacher_error=0.0)
    rng = np.random.default_rng(0)
    # margins: 0.98, 0.042, 0, 0.005, 0.96 -> 12 and 13
    assert QUERY_STRATEGIES["margin"](_cfg("margin")).select(candidates, 2, ctx, rng).tolist() == [12, 13]
    # entropy: 1.099 for the uniform row (12), 1.023 for the spread row (11), about ln 2 for the two-way tie (13)
    assert QUERY_STRATEGIES["entropy"](_cfg("entropy")).select(candidates, 2, ctx, rng).tolist() == [11, 12]
    picked = QUERY_STRATEGIES["random"](_cfg("random")).select(candidates, 2, None, rng)
    assert len(set(picked.tolist())) == 2 and set(picked.tolist()) <= set(candidates.tolist())
    assert QUERY_STRATEGIES["all"](_cfg("all")).select(candidates[::-1], 2, None, rng).tolist() == candidates.tolist()


def test_rad_selects_exactly_b_points_from_its_support():
    logits = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    strategy = QUERY_STRATEGIES["rad"](_cfg("rad"))
    chosen = strategy.select(np.arange(100, 150), 7, QueryContext(logits, teacher_error=0.2),
                             np.random.default_rng(3))
    assert len(chosen) == 7 and len(set(chosen.tolist())) == 7
    assert strategy.last_stats["rad_num_wrong"] == 10 and strategy.last_stats["rad_support"] >= 7


def test_pool_keeps_the_latest_answers_and_counts_every_query():
    pool = SoftLabelPool(6, 2)
    pool.add(np.array([1, 4]), torch.ones(2, 2, 3), None)
    pool.add(np.array([4, 5]), torch.full((2, 2, 3), 2.0), None)
    idx, logits, base = pool.answers()
    assert idx.tolist() == [1, 4, 5] and base is None and pool.num_queries == 4
    assert logits[:, :, 0].tolist() == [[1.0, 2.0, 2.0], [1.0, 2.0, 2.0]]
    assert pool.candidates(requery=False).tolist() == [0, 2, 3]


LOGITS = np.random.default_rng(0).normal(scale=4.0, size=(64, 10)).astype(np.float32)


def test_fp32_and_fp16_round_trips():
    fp32 = COMPRESSIONS["fp32"]()
    assert np.array_equal(fp32.decode(fp32.encode(LOGITS), 10), LOGITS)
    fp16 = COMPRESSIONS["fp16"]()
    restored = fp16.decode(fp16.encode(LOGITS), 10)
    assert restored.dtype == np.float32 and np.all(np.abs(restored - LOGITS) <= np.abs(LOGITS) * 2.0**-11 + 1e-7)


def test_int8_error_is_within_half_a_step():
    int8 = COMPRESSIONS["int8"]()
    parts = int8.encode(LOGITS)
    assert parts["codes"].dtype == np.uint8
    step = (LOGITS.max(1) - LOGITS.min(1)) / 255.0
    error = np.abs(int8.decode(parts, 10) - LOGITS)
    assert np.all(error <= step[:, None] / 2 + 1e-5) and error.max() > step.min() / 10  # really quantised


def test_topk_keeps_the_top_k_renormalised():
    topk = COMPRESSIONS["topk"](3)
    parts = topk.encode(LOGITS)
    assert parts["classes"].dtype == np.uint8 and parts["classes"].shape == (64, 3)
    restored = torch.softmax(torch.from_numpy(topk.decode(parts, 10)) / 4.0, 1).numpy()
    original = torch.softmax(torch.from_numpy(LOGITS), 1).numpy()
    top = np.argsort(-original, 1)[:, :3]
    assert np.allclose(restored.sum(1), 1.0, atol=1e-6)
    assert np.array_equal(np.sort(np.flatnonzero(restored[0])), np.sort(top[0]))
    assert np.all((restored > 0).sum(1) == 3)
    # at tau = 1 the kept probabilities are the original ones renormalised over the top 3
    at_one = torch.softmax(torch.from_numpy(topk.decode(parts, 10)), 1).numpy()
    kept = np.take_along_axis(original, top, 1)
    assert np.allclose(np.take_along_axis(at_one, top, 1), kept / kept.sum(1, keepdims=True), atol=1e-6)


def test_compressed_replies_round_trip_through_the_protocol_and_wrong_parts_are_refused():
    for name in COMPRESSIONS:
        compression = COMPRESSIONS[name](3)
        reply = protocol.query_reply(2, LOGITS, LOGITS + 1, compression)
        answer = protocol.parse_query_reply(reply, 64, 10, with_base=True, compression=compression)
        assert answer.partition_id == 2 and answer.logits.shape == (64, 10) and answer.base_logits.shape == (64, 10)
    fp16_reply = protocol.query_reply(0, LOGITS, None, COMPRESSIONS["fp16"]())
    with pytest.raises(protocol.ProtocolError, match="float32"):
        protocol.parse_query_reply(fp16_reply, 64, 10, compression=COMPRESSIONS["fp32"]())
    with pytest.raises(CompressionError, match="lack"):
        COMPRESSIONS["int8"]().decode({"codes": np.zeros((2, 3), np.uint8)}, 3)


def test_measured_bytes_are_the_arrays_plus_framing():
    sizes = {}
    for name in ("fp32", "fp16", "int8", "topk"):
        reply = protocol.query_reply(0, LOGITS, None, COMPRESSIONS[name](3))
        arrays = list(reply["softlabels"].values())
        data = sum(a.numpy().nbytes for a in arrays)
        sizes[name] = data
        npy_headers = sum(len(a.data) - a.numpy().nbytes for a in arrays)  # Flower ships arrays as .npy bytes
        assert npy_headers == 128 * len(arrays)
        framing = protocol.payload_bytes(reply) - data - npy_headers  # protobuf keys, dtype, shape, the metrics
        assert 0 < framing < 64 * len(arrays) + 160, (name, framing)
    assert sizes["fp32"] == 64 * 10 * 4 and sizes["fp16"] == 64 * 10 * 2
    assert sizes["int8"] == 64 * 10 + 64 * 8 and sizes["topk"] == 64 * 3 * (1 + 4)
    small = protocol.payload_bytes(RecordDict({"a": ArrayRecord({"x": Array(np.zeros(10, np.float32))})}))
    large = protocol.payload_bytes(RecordDict({"a": ArrayRecord({"x": Array(np.zeros(1010, np.float32))})}))
    assert 4000 <= large - small <= 4004  # 1000 more float32 values, plus at most a few length-prefix bytes
