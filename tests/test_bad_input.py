"""Bad input, as a user types it: the `fedkd` command (in this process, through Hydra) and scripts/deploy_local.py
exit 2 with one message that names the key or file, print no traceback, and write nothing."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest
import torch
from test_real_loaders import write_mnist

from fedkd import cli
from fedkd.checkpoint import SERVER_CHECKPOINT
from fedkd.results import CONFIG_FILE

ROOT = Path(__file__).resolve().parents[1]
CPUS = len(os.sched_getaffinity(0))


def random_bytes(folder: Path) -> str:
    path = folder / "weights.pt"
    path.write_bytes(os.urandom(4096))
    return str(path)


def foreign_state_dict(folder: Path) -> str:
    path = folder / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    return str(path)


def broken_mnist(folder: Path) -> str:
    """torchvision's MNIST/raw with the test images gzip'd and cut in half, as an interrupted download leaves it."""
    write_mnist(folder / "mnist")
    raw = folder / "mnist" / "MNIST" / "raw"
    images = raw / "t10k-images-idx3-ubyte.gz"
    with gzip.open(images, "rb") as f:
        whole = gzip.compress(f.read())
    images.write_bytes(whole[: len(whole) // 2])
    return str(folder / "mnist")


def a_file(folder: Path) -> str:
    path = folder / "notes.txt"
    path.write_text("a file where a folder belongs\n")
    return str(path)


def run_folder(folder: Path, config: str | None = None, checkpoint: bytes | None = None) -> str:
    run = folder / "old-run"
    run.mkdir()
    if config is not None:
        (run / CONFIG_FILE).write_text(config)
    if checkpoint is not None:
        (run / SERVER_CHECKPOINT).parent.mkdir()
        (run / SERVER_CHECKPOINT).write_bytes(checkpoint)
    return str(run)


def valid_config_text() -> str:
    import yaml

    from fedkd.validation import load_run_config
    return yaml.safe_dump(load_run_config(["engine=inprocess"]).to_dict(), sort_keys=False)


# (overrides; a function of the test's folder gives a value made there), the key or file the message names
CASES = [
    (["seed=99999999999999999999"], "seed"),
    (["seed=-1"], "seed"),
    (["seed=1.5"], "seed"),
    (["name=a/b"], "name"),
    (["name=.."], "name"),
    (["name="], "name"),
    (["federation.num_clients=inf"], "federation.num_clients"),
    (["federation.num_rounds=nan"], "federation.num_rounds"),
    (["federation.num_rounds=99999999999999999999"], "federation.num_rounds"),
    ([f"federation.client_cpus={CPUS + 2}"], "federation.client_cpus"),
    (["federation.client_cpus=0"], "federation.client_cpus"),
    (["federation.client_gpus=nan"], "federation.client_gpus"),
    (["federation.round_timeout=-1"], "federation.round_timeout"),
    (["federation.round_timeout=inf"], "federation.round_timeout"),
    (["federation.min_clients=20"], "federation.min_clients"),
    (["teacher.lr=inf"], "teacher.lr"),
    (["teacher.lr=-0.1"], "teacher.lr"),
    (["teacher.epochs=99999999999999999999"], "teacher.epochs"),
    (["teacher.batch_size=0"], "teacher.batch_size"),
    (["teacher.momentum=1.0"], "teacher.momentum"),
    (["teacher.arch=vgg11"], "teacher.arch"),
    (["student.temperature=nan"], "student.temperature"),
    (["student.epochs=-3"], "student.epochs"),
    (["dataset.color_std=nan"], "dataset.color_std"),
    (["dataset.bias_ratio=2"], "dataset.bias_ratio"),
    (["dataset=mnist_lt", "dataset.imbalance=inf"], "dataset.imbalance"),
    (["dataset=imagenet"], "dataset/imagenet"),  # Hydra's message, which lists the presets
    (["partition=dirichlet", "partition.alpha=-1"], "partition.alpha"),
    (["aggregator=median"], "aggregator/median"),
    (["+aggregator.tempreature=2"], "aggregator.tempreature"),
    (["query=random", "query.per_round=-5"], "query.per_round"),
    (["query.compression=zip"], "query.compression"),
    (["privacy=central_gaussian", "privacy.epsilon=-1"], "privacy.epsilon"),
    (["privacy=central_gaussian", "privacy.delta=nan"], "privacy.delta"),
    (["device=tpu"], "device"),
    (["engine=warp"], "engine"),
    (["+bogus=1"], "bogus"),
    (["student.pretrained_path=/no/such/weights.pt"], "student.pretrained_path"),
    ([lambda d: f"teacher.pretrained_path={random_bytes(d)}"], "teacher.pretrained_path"),
    ([lambda d: f"student.pretrained_path={foreign_state_dict(d)}"], "student.pretrained_path"),
    (["dataset.source=torchvision_mnist", lambda d: f"dataset.data_root={d / 'empty'}"], "dataset.data_root"),
    (["dataset.source=torchvision_mnist", lambda d: f"dataset.data_root={broken_mnist(d)}"],
     "t10k-images-idx3-ubyte.gz"),
    (["runs_dir=/proc/fedkd-runs"], "runs_dir"),
    ([lambda d: f"runs_dir={a_file(d)}/runs"], "runs_dir"),
    ([lambda d: f"resume={d / 'nowhere'}"], "resume"),
    ([lambda d: f"resume={run_folder(d)}"], CONFIG_FILE),
    ([lambda d: f"resume={run_folder(d, config='seed: [1, 2')}"], CONFIG_FILE),
    ([lambda d: f"resume={run_folder(d, config='just text')}"], CONFIG_FILE),
    ([lambda d: f"resume={run_folder(d, config=valid_config_text())}"], SERVER_CHECKPOINT),
    ([lambda d: f"resume={run_folder(d, config=valid_config_text(), checkpoint=os.urandom(64))}"],
     SERVER_CHECKPOINT),
    ([lambda d: f"resume={run_folder(d, config=valid_config_text())}", "seed=3"], "resume"),
]


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def _case_id(index: int, overrides: list) -> str:
    shown = " ".join(o if isinstance(o, str) else "<made>" for o in overrides)
    return f"{index}:{shown[:60]}"


@pytest.mark.parametrize(("overrides", "named"), CASES, ids=[_case_id(i, c[0]) for i, c in enumerate(CASES)])
def test_the_command_refuses_bad_input_in_one_message(overrides, named, tmp_path, monkeypatch, capsys):
    made = tmp_path / "made"
    made.mkdir()
    args = [o(made) if callable(o) else o for o in overrides]
    if not any(a.startswith(("runs_dir=", "resume=")) for a in args):
        args.append(f"runs_dir={tmp_path / 'runs'}")
    before = _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["fedkd", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())  # rich wraps long lines
    assert exit_info.value.code == 2, text
    assert named in text, text
    assert text.count("fedkd: invalid config") == 1 or "Could not find" in text, text  # ours, or Hydra's
    assert "Traceback" not in text
    assert _files(tmp_path) == before  # no run directory, no Hydra output folder, nothing changed


def deploy_main():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import deploy_local
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return deploy_local.main


DEPLOY_CASES = [
    (["--nodes", "0"], "--nodes"),
    (["--port", "70000"], "port 70000"),
    (["--port", "0"], "port 0"),
    (["--node-ports", "5001", "5002", "5003"], "--node-ports"),
    (["--node-configs", "partition-id=5 num-partitions=2", "partition-id=1 num-partitions=2"], "partition-id=5"),
    (["--node-configs", "num-partitions=2", "partition-id=1 num-partitions=2"], "partition-id"),
    (["--node-configs", "partition-id=0 num-partitions=3", "partition-id=1 num-partitions=3"], "num-partitions=3"),
    (["federation.num_rounds=0"], "federation.num_rounds"),
    (["teacher.lr=nan"], "teacher.lr"),
]


@pytest.mark.parametrize(("argv", "named"), DEPLOY_CASES, ids=[" ".join(c[0])[:60] for c in DEPLOY_CASES])
def test_deploy_local_refuses_bad_input_before_starting_a_process(argv, named, tmp_path, capsys):
    home = tmp_path / "home"
    code = deploy_main()(["--home", str(home), *argv])
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert code == 2, text
    assert named in text, text
    assert "Traceback" not in text and "SuperLink on" not in text
    assert not home.exists()
