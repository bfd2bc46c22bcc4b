"""Readers of real datasets in their standard on-disk formats under ``dataset.data_root``; nothing is downloaded.

Every reader first checks that its files are there and raises ``MissingDataError`` listing the full paths it
expects, so that ``check_against_data`` can turn a missing download into one clear config error before any process
starts. The formats are torchvision's (MNIST, CIFAR, CelebA) and the folder released with Waterbirds (Sagawa et
al. 2020). The files are parsed here rather than through torchvision's dataset classes where those would refuse
valid files: CIFAR and CelebA check md5 sums of the official files (so a test cannot build tiny ones) and MNIST
looks only for the unpacked idx files (a folder holding just the downloaded .gz files would be refused).
"""

from __future__ import annotations

import csv
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class MissingDataError(FileNotFoundError):
    """Files of a real dataset are missing under data_root; the message lists what to put where."""


def require(name: str, expected: list[tuple[Path, ...]], hint: str) -> list[Path]:
    """The first existing path of every alternative tuple (e.g. a file or its .gz); ``MissingDataError`` naming
    every expected path when any is missing."""
    found = [next((p for p in options if p.exists()), None) for options in expected]
    missing = [" or ".join(map(str, options)) for options, path in zip(expected, found, strict=True) if path is None]
    if missing:
        listing = "\n".join(f"  {' or '.join(map(str, options))}" for options in expected)
        what = "every expected file" if len(missing) == len(expected) > 1 else "; ".join(missing)
        where = "" if expected[0][0].is_absolute() else f" (paths relative to {Path.cwd()})"
        raise MissingDataError(
            f"{name}: missing {what}{where}\nexpected files:\n{listing}\n"
            f"download is off: {hint}, or point dataset.data_root at the folder that holds them"
        )
    return found


def _read_idx(path: Path) -> np.ndarray:
    """An idx-ubyte array (LeCun's MNIST format, gzip'd or not): magic 0x0000 08 <ndim>, big-endian int32 dims."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot be read ({type(err).__name__}: {err}); download it again") from None
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim == 0:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#010x})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_torchvision_mnist(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST train then test (60000 + 10000 in the real files) from ``<root>/MNIST/raw``: uint8 images
    [N, 28, 28] and int64 labels."""
    raw = root / "MNIST" / "raw"
    paths = require(
        "MNIST (torchvision format)",
        [(raw / f, raw / f"{f}.gz") for f in MNIST_FILES],
        f"torchvision.datasets.MNIST('{root}', download=True) puts them there",
    )
    train_x, train_y, test_x, test_y = (_read_idx(p) for p in paths)
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError(f"{raw}: image and label files hold different numbers of examples")
    return np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y]).astype(np.int64)


@dataclass(frozen=True)
class CifarFormat:
    """Where torchvision's CIFAR-10 / CIFAR-100 pickles live and which keys hold labels and class names."""

    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    labels_key: str
    names_key: str


CIFAR_FORMATS = {
    10: CifarFormat("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                    "batches.meta", "labels", "label_names"),
    100: CifarFormat("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names"),
}


@dataclass(frozen=True)
class TrainTest:
    """Official train and test sets: uint8 images [N, C, H, W], int64 labels, the class names."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]


def _unpickle(path: Path) -> dict[str, object]:
    """A CIFAR pickle (Python 2, hence latin1) with its keys as str, whether they were pickled as str or bytes."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path}: not a readable CIFAR pickle ({type(err).__name__}: {err}); download it again"
                         ) from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: not a CIFAR batch (a {type(entry).__name__}, not a dict); download it again")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_cifar(root: Path, num_classes: int) -> TrainTest:
    """CIFAR-10 (``num_classes=10``) or CIFAR-100 (fine labels) from torchvision's python-pickle folders."""
    fmt = CIFAR_FORMATS[num_classes]
    folder = root / fmt.folder
    names = [*fmt.train, fmt.test, fmt.meta]
    paths = require(
        f"CIFAR-{num_classes} (torchvision format)",
        [(folder / n,) for n in names],
        f"torchvision.datasets.CIFAR{num_classes}('{root}', download=True) puts them there",
    )
    batches = [_unpickle(p) for p in paths[:-1]]

    def images(entries: list[dict[str, object]]) -> np.ndarray:
        return np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries]).reshape(-1, 3, 32, 32)

    def labels(entries: list[dict[str, object]]) -> np.ndarray:
        return np.concatenate([np.asarray(e[fmt.labels_key], dtype=np.int64) for e in entries])

    class_names = tuple(_text(n) for n in _unpickle(paths[-1])[fmt.names_key])
    if len(class_names) != num_classes:
        raise ValueError(f"{paths[-1]}: {len(class_names)} class names, expected {num_classes}")
    return TrainTest(images(batches[:-1]), labels(batches[:-1]), images(batches[-1:]), labels(batches[-1:]),
                     class_names)


@dataclass(frozen=True)
class GroupTable:
    """Image files with class y, spurious attribute a and official split (0 train, 1 val, 2 test)."""

    paths: tuple[Path, ...]
    y: np.ndarray
    a: np.ndarray
    official_split: np.ndarray


WATERBIRDS_FOLDER = "waterbird_complete95_forest2water2"


def read_waterbirds(root: Path) -> GroupTable:
    """Waterbirds' metadata.csv (columns img_filename, y, split, place; Sagawa et al. 2020): y 1 = waterbird,
    place 1 = water background; image paths are relative to the folder."""
    folder = root / WATERBIRDS_FOLDER
    (metadata,) = require(
        "Waterbirds", [(folder / "metadata.csv",)],
        f"unpack waterbird_complete95_forest2water2.tar.gz (the Group DRO release) into {root}",
    )
    with open(metadata, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {"img_filename", "y", "split", "place"}
    if not rows or not columns <= set(rows[0]):
        raise ValueError(f"{metadata}: expected the columns {sorted(columns)}")
    return GroupTable(
        paths=tuple(folder / r["img_filename"] for r in rows),
        y=np.array([int(r["y"]) for r in rows], dtype=np.int64),
        a=np.array([int(r["place"]) for r in rows], dtype=np.int64),
        official_split=np.array([int(r["split"]) for r in rows], dtype=np.int64),
    )


CELEBA_FILES = ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba")


def read_celeba(root: Path, target: str, attribute: str) -> GroupTable:
    """CelebA in torchvision's layout (``<root>/celeba``): attributes (a count line, a header of 40 names, then
    ``filename`` and 40 values of 1 / -1) and the official partition (``filename split``). Read here because
    torchvision's CelebA checks the md5 sums of the official files."""
    folder = root / "celeba"
    attr_file, partition_file, images = require(
        "CelebA (torchvision format)", [(folder / n,) for n in CELEBA_FILES],
        f"torchvision.datasets.CelebA('{root}', download=True) or the official Google Drive files put them there",
    )
    lines = attr_file.read_text().splitlines()
    header = lines[1].split()
    for name in (target, attribute):
        if name not in header:
            raise ValueError(f"{attr_file}: no attribute {name!r} in its header")
    rows = [line.split() for line in lines[2:] if line.strip()]
    values = np.array([r[1:] for r in rows], dtype=np.int64)
    split_of = dict(line.split() for line in partition_file.read_text().splitlines() if line.strip())
    return GroupTable(
        paths=tuple(images / r[0] for r in rows),
        y=(values[:, header.index(target)] == 1).astype(np.int64),
        a=(values[:, header.index(attribute)] == 1).astype(np.int64),
        official_split=np.array([int(split_of[r[0]]) for r in rows], dtype=np.int64),
    )


def load_images(paths: list[Path], size: int) -> np.ndarray:
    """RGB images center-cropped to a square and resized to ``size`` (bilinear): float32 [N, 3, size, size] in
    [0, 1]. Only the selected images are decoded: the full CelebA or Waterbirds sets do not fit in memory as
    float arrays."""
    from PIL import Image

    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = "\n".join(f"  {p}" for p in missing[:5])
        raise MissingDataError(f"{len(missing)} image files listed in the metadata are missing, e.g.\n{shown}")
    out = np.empty((len(paths), 3, size, size), dtype=np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            img = img.convert("RGB")
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return out
