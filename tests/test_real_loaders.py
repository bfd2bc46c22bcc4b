"""Real-dataset loaders on tiny files written in exactly the on-disk formats (torchvision's MNIST idx files,
CIFAR pickles, CelebA text files; the Waterbirds folder), read through the registered sources and benchmarks;
missing files as config errors; ResNet-18 and local pretrained weights; a tiny federated run on CIFAR-10-LT."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST
from PIL import Image

from fedkd.config import ConfigError
from fedkd.data import build_benchmark
from fedkd.data.benchmarks import BENCHMARKS, SPLITS, long_tail_counts
from fedkd.data.ondisk import MissingDataError, read_celeba, read_torchvision_mnist
from fedkd.data.sources import SOURCES
from fedkd.models import MODELS, build_model
from fedkd.validation import load_run_config

# ---------------------------------------------------------------- writers of the real formats


def write_idx(path: Path, array: np.ndarray) -> None:
    """LeCun's idx-ubyte: magic 0x00000803 (ubyte, 3 dims) or 0x00000801, big-endian int32 dims, the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(root: Path, per_class_train: int = 4, per_class_test: int = 1, gz: bool = True):
    """torchvision's MNIST/raw folder; train files plain, test files gzip'd (as downloaded) when ``gz``."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, per_class in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        suffix = ".gz" if gz and prefix == "t10k" else ""
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[prefix] = (images, labels)
    return arrays


def cifar_images(labels: np.ndarray, offset: int) -> np.ndarray:
    """Rows of 3072 bytes (R plane, G plane, B plane): R = the label, G = the row's number, B = 255 - label."""
    n = len(labels)
    planes = [np.repeat(labels[:, None], 1024, 1), np.repeat((np.arange(n) + offset)[:, None] % 256, 1024, 1),
              np.repeat(255 - labels[:, None], 1024, 1)]
    return np.concatenate(planes, axis=1).astype(np.uint8)


class Py2Str(bytes):
    """A Python 2 ``str``: the real CIFAR pickles were written by Python 2, so their keys and class names are
    BINSTRING opcodes, which load as "data" with encoding="latin1" (torchvision) and as b"data" with "bytes"."""


class Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2str(self, obj: Py2Str) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2str


def dump(path: Path, entry: dict, python2: bool = True) -> None:
    """A protocol-2 pickle of ``entry`` with its byte keys and byte names as Python 2 str (the real files) or as
    Python 3 bytes (a file re-pickled from a load with encoding="bytes")."""
    def convert(value: object) -> object:
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            return [Py2Str(v) for v in value]
        return Py2Str(value) if isinstance(value, bytes) else value

    with open(path, "wb") as f:
        if python2:
            Py2Pickler(f, protocol=2).dump({Py2Str(k): convert(v) for k, v in entry.items()})
        else:
            pickle.dump(entry, f, protocol=2)


def write_cifar10(root: Path, per_class_batch: int = 2, per_class_test: int = 3, python2: bool = True) -> None:
    """cifar-10-batches-py: five training batches, test_batch, batches.meta, with the real files' keys."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    row = 0
    for name, per_class in [*((f"data_batch_{i}", per_class_batch) for i in range(1, 6)),
                            ("test_batch", per_class_test)]:
        labels = np.tile(np.arange(10), per_class)
        dump(folder / name, {b"batch_label": name.encode(), b"labels": labels.tolist(),
                             b"data": cifar_images(labels, row), b"filenames": [b"x.png"] * len(labels)}, python2)
        row += len(labels)
    dump(folder / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072}, python2)


def write_cifar100(root: Path, per_class: int = 3) -> None:
    """cifar-100-python: train, test, meta with fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for offset, name in enumerate(("train", "test")):
        fine = np.tile(np.arange(100), per_class)
        dump(folder / name, {b"filenames": [b"x.png"] * len(fine), b"batch_label": name.encode(),
                             b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(),
                             b"data": cifar_images(fine, offset * 1000)})
    dump(folder / "meta", {b"fine_label_names": [f"fine{c}".encode() for c in range(100)],
                           b"coarse_label_names": [f"coarse{c}".encode() for c in range(20)]})


def colour_of(row: int, y: int, a: int) -> tuple[int, int, int]:
    return (10 * row % 250, 200 * y, 200 * a)


def write_waterbirds(root: Path, per_group: dict[int, int]) -> list[dict]:
    """The Group DRO folder: metadata.csv and 12x8 PNG images in species folders, a solid colour in the central
    8x8 square and black margins (cut by the center crop). ``per_group[split]`` images of each (y, place)."""
    folder = root / "waterbird_complete95_forest2water2"
    rows = []
    for split, n in per_group.items():
        for y in (0, 1):
            for place in (0, 1):
                for _ in range(n):
                    i = len(rows)
                    species = "001.Black_footed_Albatross" if y else "100.Brown_Pelican"
                    rows.append({"img_id": i + 1, "img_filename": f"{species}/img_{i}.png", "y": y,
                                 "split": split, "place": place, "place_filename": f"/b/bamboo/{i}.jpg"})
    for r in rows:
        pixels = np.zeros((8, 12, 3), dtype=np.uint8)
        pixels[:, 2:10] = colour_of(r["img_id"] - 1, r["y"], r["place"])
        (folder / r["img_filename"]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / r["img_filename"])
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(str(r[k]) for k in header) for r in rows]
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return rows


CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
]


def write_celeba(root: Path, per_group: dict[int, int]) -> list[tuple[str, int, int, int]]:
    """torchvision's celeba folder: list_attr_celeba.txt (count, 40 names, rows of 1/-1 padded with spaces),
    list_eval_partition.txt, img_align_celeba/*.jpg (solid colour, 8 wide and 10 high, as 178x218 is portrait)."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rows = []
    for split, n in per_group.items():
        for blond in (0, 1):
            for male in (0, 1):
                for _ in range(n):
                    rows.append((f"{len(rows) + 1:06d}.jpg", split, blond, male))
    attr_lines = [str(len(rows)), " ".join(CELEBA_ATTRIBUTES) + " "]
    rng = np.random.default_rng(1)
    for i, (name, _, blond, male) in enumerate(rows):
        values = rng.choice([-1, 1], size=40)
        values[CELEBA_ATTRIBUTES.index("Blond_Hair")] = 1 if blond else -1
        values[CELEBA_ATTRIBUTES.index("Male")] = 1 if male else -1
        attr_lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
        pixels = np.full((10, 8, 3), colour_of(i, blond, male), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "img_align_celeba" / name, quality=100)
    (folder / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {s}\n" for n, s, _, _ in rows))
    return rows


# ---------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [True, False], ids=["gz-test-files", "plain"])
def test_torchvision_mnist_source_reads_idx_files(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    source = SOURCES["torchvision_mnist"](tmp_path)
    assert source.images.shape == (50, 28, 28) and source.images.dtype == np.float32
    assert source.labels.tolist() == arrays["train"][1].tolist() + arrays["t10k"][1].tolist()
    expected = np.concatenate([arrays["train"][0], arrays["t10k"][0]]) / 255.0
    np.testing.assert_allclose(source.images, expected, rtol=1e-6)


def test_idx_files_are_what_torchvision_reads(tmp_path):
    import torchvision

    arrays = write_mnist(tmp_path, gz=False)
    for train, prefix in ((True, "train"), (False, "t10k")):
        tv = torchvision.datasets.MNIST(str(tmp_path), train=train, download=False)
        assert np.array_equal(tv.data.numpy(), arrays[prefix][0]) and np.array_equal(tv.targets.numpy(),
                                                                                    arrays[prefix][1])
    images, labels = read_torchvision_mnist(tmp_path)
    assert np.array_equal(images[:40], arrays["train"][0]) and np.array_equal(labels[40:], arrays["t10k"][1])


def test_mnist_lt_and_cmnist_from_torchvision_mnist(tmp_path):
    write_mnist(tmp_path)
    common = dict(source="torchvision_mnist", data_root=str(tmp_path), test_per_class=1, val_per_class=1)
    lt = build_benchmark(BENCHMARKS.config("mnist_lt", imbalance=1.0, **common), 0)
    source = SOURCES["torchvision_mnist"](tmp_path)
    assert sum(len(lt[s]) for s in SPLITS) == 50 and lt.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(lt["test"].x[:, 0], source.images[lt["test"].source_index])
    cm = build_benchmark(BENCHMARKS.config("cmnist", **common), 0)
    assert cm.input_shape == (3, 28, 28) and np.bincount(cm["test"].y).tolist() == [1] * 10


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("python2", [True, False], ids=["python2-str-keys", "bytes-keys"])
def test_cifar10_lt_from_torchvision_pickles(tmp_path, python2):
    write_cifar10(tmp_path, python2=python2)
    cfg = BENCHMARKS.config("cifar10_lt", data_root=str(tmp_path), imbalance=5.0, test_per_class=2,
                        val_per_class=1, transfer_fraction=0.25)
    bench = build_benchmark(cfg, 0)
    assert bench.num_classes == 10 and bench.input_shape == (3, 32, 32)
    assert bench.group_names[:3] == ("airplane", "automobile", "bird")
    trained = np.bincount(np.concatenate([bench["pool"].y, bench["transfer"].y]), minlength=10)
    assert trained.tolist() == long_tail_counts(10, 10, 5.0).tolist() == [10, 8, 6, 5, 4, 4, 3, 2, 2, 2]
    assert np.bincount(bench["test"].y).tolist() == [2] * 10 and np.bincount(bench["val"].y).tolist() == [1] * 10
    # val and test from the official test batch (rows 100..129), pool and transfer from the training batches
    assert bench["test"].source_index.min() >= 100 and bench["val"].source_index.min() >= 100
    assert bench["pool"].source_index.max() < 100 and bench["transfer"].source_index.max() < 100
    for split in SPLITS:
        s = bench[split]
        assert s.x.dtype == np.float32 and np.array_equal(s.g, s.y)
        np.testing.assert_allclose(s.x[:, 0], np.broadcast_to(s.y[:, None, None] / 255, (len(s), 32, 32)), rtol=1e-6)
        np.testing.assert_allclose(s.x[:, 1, 5, 7], s.source_index % 256 / 255, rtol=1e-6)
        np.testing.assert_allclose(s.x[:, 2, 31, 0], (255 - s.y) / 255, rtol=1e-6)
    balanced = build_benchmark(BENCHMARKS.config("cifar10", data_root=str(tmp_path), test_per_class=2,
                                             val_per_class=1), 0)
    assert np.bincount(np.concatenate([balanced["pool"].y, balanced["transfer"].y])).tolist() == [10] * 10


def test_cifar_pickles_are_what_torchvision_reads(tmp_path, monkeypatch):
    import torchvision

    write_cifar10(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    tv = torchvision.datasets.CIFAR10(str(tmp_path), train=False, download=False)
    bench = build_benchmark(BENCHMARKS.config("cifar10", data_root=str(tmp_path), test_per_class=2,
                                          val_per_class=1), 0)
    test = bench["test"]
    np.testing.assert_allclose(test.x, tv.data[test.source_index - 100].transpose(0, 3, 1, 2) / 255, rtol=1e-6)
    assert test.y.tolist() == [tv.targets[i] for i in test.source_index - 100]
    assert tuple(tv.classes) == bench.group_names


def test_cifar100_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    for name, imbalance in (("cifar100", 1.0), ("cifar100_lt", 3.0)):
        profile = {"imbalance": imbalance} if name.endswith("_lt") else {}  # balanced CIFAR has no such key
        bench = build_benchmark(BENCHMARKS.config(name, data_root=str(tmp_path), test_per_class=2, val_per_class=1,
                                                  **profile), 0)
        assert bench.num_classes == bench.num_groups == 100 and bench.group_names[7] == "fine7"
        assert np.bincount(bench["test"].y).tolist() == [2] * 100
        trained = np.bincount(np.concatenate([bench["pool"].y, bench["transfer"].y]), minlength=100)
        assert trained.tolist() == long_tail_counts(3, 100, imbalance).tolist()
        np.testing.assert_allclose(bench["val"].x[:, 0, 0, 0], bench["val"].y / 255, rtol=1e-6)


def test_cifar_test_set_too_small_is_a_config_error(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ConfigError, match=r"dataset = 'cifar10_lt'.*3 official test images"):
        load_run_config([*FAST, f"runs_dir={tmp_path}", "dataset=cifar10_lt", f"dataset.data_root={tmp_path}",
                         "dataset.test_per_class=3", "dataset.val_per_class=1"])


# ---------------------------------------------------------------- Waterbirds and CelebA


def test_waterbirds_folder(tmp_path):
    rows = write_waterbirds(tmp_path, {0: 3, 1: 2, 2: 2})
    cfg = BENCHMARKS.config("waterbirds", data_root=str(tmp_path), image_size=4, val_per_class=1,
                        test_per_class=5, transfer_fraction=0.34)
    bench = build_benchmark(cfg, 0)
    assert bench.group_names == ("landbird-land", "landbird-water", "waterbird-land", "waterbird-water")
    assert bench.num_classes == 2 and bench.input_shape == (3, 4, 4)
    counts = {s: np.bincount(bench[s].g, minlength=4).tolist() for s in SPLITS}
    assert counts == {"pool": [2] * 4, "transfer": [1] * 4, "val": [1] * 4, "test": [2] * 4}
    official = {s: {r["split"] for r in (rows[i] for i in bench[s].source_index)} for s in SPLITS}
    assert official == {"pool": {0}, "transfer": {0}, "val": {1}, "test": {2}}
    for split in SPLITS:
        s = bench[split]
        meta = [rows[i] for i in s.source_index]
        assert s.y.tolist() == [r["y"] for r in meta] and s.a.tolist() == [r["place"] for r in meta]
        assert np.array_equal(s.g, 2 * s.y + s.a)
        # the black margins are cropped away: every pixel is the central colour
        colours = np.array([colour_of(r["img_id"] - 1, r["y"], r["place"]) for r in meta]) / 255
        np.testing.assert_allclose(s.x, np.broadcast_to(colours[:, :, None, None], s.x.shape), atol=1e-6)
    capped = build_benchmark(BENCHMARKS.config("waterbirds", data_root=str(tmp_path), image_size=4, max_examples=8,
                                           val_per_class=1, test_per_class=5), 0)
    assert len(capped["pool"]) + len(capped["transfer"]) == 8


def test_celeba_torchvision_files(tmp_path):
    rows = write_celeba(tmp_path, {0: 3, 1: 2, 2: 2})
    bench = build_benchmark(BENCHMARKS.config("celeba", data_root=str(tmp_path), image_size=5, val_per_class=2,
                                          test_per_class=1, transfer_fraction=0.34), 0)
    assert bench.group_names == ("not_blond-female", "not_blond-male", "blond-female", "blond-male")
    assert bench.input_shape == (3, 5, 5)
    counts = {s: np.bincount(bench[s].g, minlength=4).tolist() for s in SPLITS}
    assert counts == {"pool": [2] * 4, "transfer": [1] * 4, "val": [2] * 4, "test": [1] * 4}
    for split in SPLITS:
        s = bench[split]
        meta = [rows[i] for i in s.source_index]
        assert {m[1] for m in meta} == {"pool": {0}, "transfer": {0}, "val": {1}, "test": {2}}[split]
        assert s.y.tolist() == [m[2] for m in meta] and s.a.tolist() == [m[3] for m in meta]
        colours = np.array([colour_of(i, m[2], m[3]) for i, m in zip(s.source_index, meta, strict=True)]) / 255
        np.testing.assert_allclose(s.x, np.broadcast_to(colours[:, :, None, None], s.x.shape), atol=3 / 255)


def test_celeba_files_are_what_torchvision_reads(tmp_path, monkeypatch):
    """torchvision's CelebA (its md5 check switched off for the tiny files) reads the same file names, official
    splits, Blond_Hair and Male values as ``read_celeba``; it also wants the identity, bbox and landmark lists."""
    import torchvision

    rows = write_celeba(tmp_path, {0: 2, 1: 1, 2: 1})
    folder, names = tmp_path / "celeba", [r[0] for r in rows]
    (folder / "identity_CelebA.txt").write_text("".join(f"{n} {i + 1}\n" for i, n in enumerate(names)))
    (folder / "list_bbox_celeba.txt").write_text(
        f"{len(names)}\nimage_id x_1 y_1 width height\n" + "".join(f"{n} 0 0 8 10\n" for n in names))
    landmarks = [f"{side}{part}_{axis}" for side, part in (("left", "eye"), ("right", "eye"), ("", "nose"),
                                                           ("left", "mouth"), ("right", "mouth")) for axis in "xy"]
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\n{' '.join(landmarks)}\n" + "".join(f"{n} {' '.join(['4'] * 10)}\n" for n in names))
    monkeypatch.setattr(torchvision.datasets.CelebA, "_check_integrity", lambda self: True)
    table = read_celeba(tmp_path, "Blond_Hair", "Male")
    for split, code in (("train", 0), ("valid", 1), ("test", 2)):
        tv = torchvision.datasets.CelebA(str(tmp_path), split=split, target_type="attr", download=False)
        mask = table.official_split == code
        assert len(tv.filename) == 4 * {0: 2, 1: 1, 2: 1}[code]
        assert tv.filename == [path.name for path, kept in zip(table.paths, mask, strict=True) if kept]
        assert tv.attr[:, tv.attr_names.index("Blond_Hair")].tolist() == table.y[mask].tolist()
        assert tv.attr[:, tv.attr_names.index("Male")].tolist() == table.a[mask].tolist()


# ---------------------------------------------------------------- missing files


def _drop(path: Path) -> Path:
    path.unlink()
    return path


MISSING = {
    "mnist": (["dataset=cmnist", "dataset.source=torchvision_mnist"], lambda root: write_mnist(root),
              lambda root: _drop(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")),
    "cifar10": (["dataset=cifar10_lt"], write_cifar10, lambda root: _drop(root / "cifar-10-batches-py" / "test_batch")),
    "cifar100": (["dataset=cifar100_lt"], write_cifar100, lambda root: _drop(root / "cifar-100-python" / "meta")),
    "waterbirds": (["dataset=waterbirds"], lambda root: write_waterbirds(root, {0: 1, 1: 1, 2: 1}),
                   lambda root: _drop(root / "waterbird_complete95_forest2water2" / "metadata.csv")),
    "celeba": (["dataset=celeba"], lambda root: write_celeba(root, {0: 1, 1: 1, 2: 1}),
               lambda root: _drop(root / "celeba" / "list_eval_partition.txt")),
}


@pytest.mark.parametrize("fmt", sorted(MISSING))
def test_missing_file_is_a_config_error_listing_the_expected_files(tmp_path, fmt):
    overrides, write, drop = MISSING[fmt]
    root = tmp_path / "data"
    write(root)
    dropped = drop(root)
    with pytest.raises(ConfigError) as err:
        load_run_config([*FAST, f"runs_dir={tmp_path}", *overrides, f"dataset.data_root={root}"])
    message = str(err.value)
    assert message.startswith(f"invalid config: dataset.data_root = '{root}'")
    missing, expected = message.split("expected files:")
    assert str(dropped) in missing.split("missing ")[1] and str(dropped) in expected and "download is off" in expected


def test_missing_mnist_lists_every_file_with_its_gz_alternative(tmp_path):
    with pytest.raises(MissingDataError) as err:
        read_torchvision_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert f"{raw / name} or {raw / name}.gz" in str(err.value)


def test_missing_image_listed_in_the_metadata(tmp_path):
    rows = write_waterbirds(tmp_path, {0: 1, 1: 1, 2: 1})
    image = _drop(tmp_path / "waterbird_complete95_forest2water2" / rows[5]["img_filename"])
    with pytest.raises(MissingDataError, match=str(image)):
        build_benchmark(BENCHMARKS.config("waterbirds", data_root=str(tmp_path), image_size=4), 0)


# ---------------------------------------------------------------- ResNet-18


@pytest.mark.parametrize("arch", ["resnet18", "resnet18_cifar"])
def test_resnet18_forward_and_features_head(arch):
    model = build_model(arch, (3, 32, 32), 10, seed=0).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, features = model(x), model.features(x)
    assert logits.shape == (2, 10) and features.shape == (2, 512)
    assert model.head.in_features == 512 and model.head.out_features == 10
    torch.testing.assert_close(model.head(features), logits)
    grey = build_model(arch, (1, 28, 28), 2, seed=0)
    assert grey(torch.rand(2, 1, 28, 28)).shape == (2, 2)


def test_resnet18_stems_differ():
    imagenet, cifar = MODELS["resnet18"]((3, 32, 32), 10), MODELS["resnet18_cifar"]((3, 32, 32), 10)
    assert imagenet.body.conv1.kernel_size == (7, 7) and isinstance(imagenet.body.maxpool, torch.nn.MaxPool2d)
    assert cifar.body.conv1.kernel_size == (3, 3) and cifar.body.conv1.stride == (1, 1)
    assert isinstance(cifar.body.maxpool, torch.nn.Identity)


def test_resnet18_loads_local_imagenet_weights(tmp_path):
    import torchvision

    torch.manual_seed(5)
    imagenet = torchvision.models.resnet18()  # an ImageNet-shaped state dict: 7x7 conv1, fc of 1000 classes
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_model("resnet18", (3, 32, 32), 10, seed=0, pretrained_path=str(path))
    fresh = build_model("resnet18", (3, 32, 32), 10, seed=0)
    torch.testing.assert_close(model.body.conv1.weight, imagenet.conv1.weight)
    torch.testing.assert_close(model.body.layer4[1].bn2.running_var, imagenet.layer4[1].bn2.running_var)
    torch.testing.assert_close(model.head.weight, fresh.head.weight)  # the head is ours, for 10 classes
    cifar = build_model("resnet18_cifar", (3, 32, 32), 10, seed=0, pretrained_path=str(path))
    torch.testing.assert_close(cifar.body.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    assert cifar.body.conv1.weight.shape == (64, 3, 3, 3)  # the 3x3 stem keeps its own initialisation


def test_pretrained_weights_missing_or_unfit(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_model("resnet18", (3, 32, 32), 10, seed=0, pretrained_path=str(tmp_path / "absent.pth"))
    path = tmp_path / "cnn.pth"
    torch.save(build_model("cnn", (3, 32, 32), 10, seed=0).body.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit"):
        build_model("resnet18", (3, 32, 32), 10, seed=0, pretrained_path=str(path))
    with pytest.raises(ConfigError, match=r"student\.pretrained_path = .*no such file"):
        load_run_config([*FAST, f"runs_dir={tmp_path}", "student.arch=resnet18",
                         f"student.pretrained_path={tmp_path / 'absent.pth'}"])


# ---------------------------------------------------------------- a run on tiny CIFAR-10-LT


def test_tiny_federated_run_on_cifar10_lt(tmp_path):
    from clients.app import app as client_app
    from fedkd.results import read_metrics
    from server.app import run_federation
    from server.inprocess import InProcessGrid

    write_cifar10(tmp_path / "data", per_class_batch=3)
    cfg = load_run_config([*FAST, f"runs_dir={tmp_path / 'runs'}", "dataset=cifar10_lt",
                           f"dataset.data_root={tmp_path / 'data'}", "dataset.imbalance=3",
                           "dataset.test_per_class=2", "dataset.val_per_class=1"])
    assert cfg.dataset.name == "cifar10_lt" and cfg.dataset.data_root == str(tmp_path / "data")
    summary = run_federation(InProcessGrid(client_app, cfg.federation.num_clients), cfg)
    last = read_metrics(summary["run_dir"])[-1]
    assert last["round"] == 2 and sum(last["test"]["group_counts"].values()) == 20
    assert set(last["test"]["per_group_accuracy"]) == {"airplane", "automobile", "bird", "cat", "deer", "dog",
                                                      "frog", "horse", "ship", "truck"}


@pytest.mark.parametrize(
    ("override", "key"),
    [("+dataset.image_size=0", "dataset.image_size"), ("+dataset.max_examples=-1", "dataset.max_examples"),
     ("dataset.data_root=' '", "dataset.data_root")],
)
def test_new_dataset_keys_are_validated(override, key):
    with pytest.raises(ConfigError, match=rf"invalid config: {key} = "):
        load_run_config([*FAST, override])


def test_dpsgd_refuses_resnet_teachers():
    with pytest.raises(ConfigError, match=r"teacher\.arch = 'resnet18_cifar'.*BatchNorm"):
        load_run_config([*FAST, "privacy=dpsgd", "privacy.epsilon=8", "teacher.arch=resnet18_cifar"])
