"""Benchmark constructions: exact bias ratios and group counts, long-tail profile, disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.data import build_benchmark
from fedkd.data.benchmarks import BENCHMARKS, SPLITS, long_tail_counts
from fedkd.data.sources import embedded_mnist


def test_embedded_mnist_is_the_real_5000_image_subset():
    source = embedded_mnist()
    assert source.images.shape == (5000, 28, 28)
    assert np.bincount(source.labels).tolist() == [500] * 10
    assert source.images.min() >= 0.0 and source.images.max() == 1.0


@pytest.mark.parametrize("name", ["cmnist", "cmnist2", "mnist_lt"])
def test_splits_are_disjoint_and_seeded(name):
    cfg = BENCHMARKS.config(name)
    bench = build_benchmark(cfg, 0)
    seen = np.concatenate([bench[s].source_index for s in SPLITS])
    assert len(np.unique(seen)) == len(seen)
    again = build_benchmark(BENCHMARKS.config(name), 0)
    other = build_benchmark(cfg, 1)
    assert np.array_equal(bench["pool"].x, again["pool"].x)
    assert not np.array_equal(bench["pool"].source_index, other["pool"].source_index)


@pytest.mark.parametrize("bias_ratio", [0.995, 0.99, 0.95, 0.8])
def test_cmnist_bias_ratio_exact_per_class(bias_ratio):
    bench = build_benchmark(BENCHMARKS.config("cmnist", bias_ratio=bias_ratio), 0)
    for split in ("pool", "transfer"):
        s = bench[split]
        for digit in range(10):
            colours = s.a[s.y == digit]
            conflicting = int(round((1 - bias_ratio) * len(colours)))
            assert np.sum(colours != digit) == conflicting
            # conflicting colours are the other nine, never the digit's own
            assert set(colours[colours != digit].tolist()) <= set(range(10)) - {digit}


def test_cmnist_unbiased_splits_and_group_counts():
    by_alignment = build_benchmark(BENCHMARKS.config("cmnist", group_by="digit_alignment"), 0)
    by_colour = build_benchmark(BENCHMARKS.config("cmnist", group_by="digit_colour"), 0)
    test = by_colour["test"]
    # colour independent of digit: every digit x colour cell holds exactly 100 / 10 images
    assert np.bincount(test.g, minlength=100).tolist() == [10] * 100
    assert by_colour.num_groups == 100 and by_alignment.num_groups == 20
    counts = np.bincount(by_alignment["test"].g, minlength=20).reshape(10, 2)
    assert counts[:, 0].tolist() == [10] * 10 and counts[:, 1].tolist() == [90] * 10
    assert np.bincount(by_alignment["val"].g, minlength=20).reshape(10, 2)[:, 0].tolist() == [2] * 10
    # the pool under digit_alignment: group 2d+1 holds exactly the conflicting images of digit d
    pool = by_alignment["pool"]
    assert np.array_equal(pool.g, pool.y * 2 + (pool.a != pool.y))


def test_cmnist_colour_is_the_foreground():
    bench = build_benchmark(BENCHMARKS.config("cmnist", color_std=0.0), 0)
    s = bench["test"]
    gray = embedded_mnist().images[s.source_index[:5]]
    from fedkd.data.benchmarks import PALETTE

    expected = PALETTE[s.a[:5]][:, :, None, None] * gray[:, None]
    np.testing.assert_allclose(s.x[:5], expected, atol=1e-6)
    assert s.x.shape[1:] == (3, 28, 28)


def test_cmnist2_binary_label_four_groups_exact():
    bias = 0.9
    bench = build_benchmark(BENCHMARKS.config("cmnist2", bias_ratio=bias), 0)
    assert bench.num_classes == 2 and bench.num_groups == 4
    pool = bench["pool"]
    digits = embedded_mnist().labels[pool.source_index]
    assert np.array_equal(pool.y, (digits >= 5).astype(int))
    for label in (0, 1):
        colours = pool.a[pool.y == label]
        assert np.sum(colours != label) == int(round((1 - bias) * len(colours)))
    # test: 500 images per label, colour independent of the label -> 250 per group
    assert np.bincount(bench["test"].g, minlength=4).tolist() == [250] * 4
    assert np.array_equal(bench["test"].g, bench["test"].y * 2 + bench["test"].a)


def test_long_tail_profile_hand_computed():
    assert long_tail_counts(380, 10, 10.0).tolist() == [
        int(np.floor(380 * 0.1 ** (c / 9))) for c in range(10)
    ]
    assert long_tail_counts(100, 3, 100.0).tolist() == [100, 10, 1]


def test_mnist_lt_counts_follow_profile_and_test_is_balanced():
    cfg = BENCHMARKS.config("mnist_lt", imbalance=10.0)
    bench = build_benchmark(cfg, 0)
    profile = long_tail_counts(500 - cfg.test_per_class - cfg.val_per_class, 10, 10.0)
    kept = np.bincount(bench["pool"].y, minlength=10) + np.bincount(bench["transfer"].y, minlength=10)
    assert kept.tolist() == profile.tolist()
    assert kept[0] / kept[9] == pytest.approx(10.0, rel=0.05)
    assert np.bincount(bench["test"].y).tolist() == [100] * 10
    assert np.array_equal(bench["test"].g, bench["test"].y)
    assert bench["pool"].x.shape[1:] == (1, 28, 28)


def test_transfer_from_pool_merges_pool_and_transfer_into_one_training_set():
    held_out = build_benchmark(BENCHMARKS.config("cmnist", bias_ratio=0.98), 0)
    merged = build_benchmark(BENCHMARKS.config("cmnist", bias_ratio=0.98, transfer_from="pool"), 0)
    assert merged["pool"] is merged["transfer"]
    expected = np.sort(np.concatenate([held_out["pool"].source_index, held_out["transfer"].source_index]))
    assert np.array_equal(merged["pool"].source_index, expected)
    # the images are those of the held-out construction, moved, not redrawn; val and test are untouched
    position = {int(i): k for k, i in enumerate(merged["pool"].source_index)}
    for split in ("pool", "transfer"):
        at = [position[int(i)] for i in held_out[split].source_index]
        assert np.array_equal(merged["pool"].x[at], held_out[split].x)
        assert np.array_equal(merged["pool"].a[at], held_out[split].a)
    for split in ("val", "test"):
        assert np.array_equal(merged[split].x, held_out[split].x)


@pytest.mark.parametrize("name", ["cmnist", "mnist_lt"])
def test_a_reserve_keeps_every_other_split_when_the_labeled_budget_moves(name):
    small = build_benchmark(BENCHMARKS.config(name, val_per_class=2, val_reserve_per_class=20), 0)
    large = build_benchmark(BENCHMARKS.config(name, val_per_class=20, val_reserve_per_class=20), 0)
    for split in ("pool", "transfer", "test"):
        for field in ("x", "y", "g", "a", "source_index"):
            assert np.array_equal(getattr(small[split], field), getattr(large[split], field)), (split, field)
    assert np.bincount(small["val"].y).tolist() == [2] * 10 and np.bincount(large["val"].y).tolist() == [20] * 10
    assert set(small["val"].source_index) < set(large["val"].source_index)  # the first 2 of the same 20
    # a reserve of 20 is what val_per_class=20 alone holds back; without a reserve the budget moves the pool
    plain = build_benchmark(BENCHMARKS.config(name, val_per_class=20), 0)
    assert np.array_equal(plain["pool"].source_index, large["pool"].source_index)
    unreserved = build_benchmark(BENCHMARKS.config(name, val_per_class=2), 0)
    assert not np.array_equal(unreserved["pool"].source_index, small["pool"].source_index)

