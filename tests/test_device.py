"""device=auto|cpu|cuda and the simulation's GPU reservation: resolution, config errors before any process starts,
the Ray backend settings, and (on a machine with CUDA) a GPU run that agrees with the CPU run."""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from conftest import FAST

from clients.app import app as client_app
from fedkd.cli import backend_config
from fedkd.config import ConfigError
from fedkd.device import DeviceError, cpu_state, model_device, resolve_device
from fedkd.models import build_model
from fedkd.results import read_metrics
from fedkd.validation import check_against_data, load_run_config, validate
from server.app import run_federation
from server.inprocess import InProcessGrid

CUDA = torch.cuda.is_available()


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    """What torch reports on a machine with two GPUs (resolution only looks, it allocates nothing)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_picks_cuda_only_where_torch_sees_it(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_and_cuda_resolve_to_the_gpu_when_there_is_one(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="sees 2 CUDA device"):
        resolve_device("cuda:2")


def test_cuda_without_a_gpu_names_the_fix(no_cuda):
    with pytest.raises(DeviceError, match="torch sees no CUDA device.*use device=auto or cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="not one of auto, cpu, cuda"):
        resolve_device("gpu")


@pytest.mark.parametrize(("overrides", "key", "message"), [
    (["device=gpu"], "device", "choose auto"),
    (["device=cuda:x"], "device", "choose auto"),
    (["federation.client_gpus=-0.5"], "federation.client_gpus", "must be >= 0"),
    (["device=cpu", "federation.client_gpus=0.5"], "federation.client_gpus", "device=cpu does not use"),
])
def test_bad_device_settings_name_their_key(overrides, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_run_config(overrides)
    assert key in str(info.value)


def test_a_gpu_the_machine_lacks_is_refused_before_anything_starts(no_cuda, tmp_path):
    with pytest.raises(ConfigError, match="invalid config: device = 'cuda'.*torch sees no CUDA device"):
        load_run_config(["device=cuda", f"runs_dir={tmp_path}"])
    # Ray would wait forever for a GPU no node has: refused instead of hanging
    with pytest.raises(ConfigError, match="federation.client_gpus.*0 CUDA device.*no client could ever be scheduled"):
        load_run_config(["federation.client_gpus=0.25", f"runs_dir={tmp_path}"])
    # the in-process engine has no Ray reservation to wait for
    check_against_data(load_run_config(["federation.client_gpus=0.25", "engine=inprocess", f"runs_dir={tmp_path}"]))
    assert list(tmp_path.iterdir()) == []


def test_ray_gets_the_cpus_and_gpus_per_client(two_gpus, tmp_path):
    cfg = load_run_config(["federation.client_cpus=2", "federation.client_gpus=0.25", f"runs_dir={tmp_path}"])
    # max_restarts: Ray brings a worker that died back, for the clients routed to it later
    assert backend_config(cfg)["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.25, "max_restarts": -1}
    assert backend_config(load_run_config([]))["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0,
                                                                       "max_restarts": -1}


def test_more_cpus_per_client_than_the_machine_has_is_refused(tmp_path):
    """Ray would build an empty actor pool and the round would wait for round_timeout."""
    cpus = len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match=rf"federation.client_cpus = {cpus + 1}.*this machine has {cpus} CPUs"):
        load_run_config([f"federation.client_cpus={cpus + 1}", f"runs_dir={tmp_path}"])
    check_against_data(load_run_config([f"federation.client_cpus={cpus + 1}", "engine=inprocess",
                                        f"runs_dir={tmp_path}"]))
    assert list(tmp_path.iterdir()) == []


def test_ray_joins_a_cluster_only_when_ray_address_names_one(monkeypatch):
    cfg = load_run_config([])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert backend_config(cfg)["init_args"]["address"] == "local"  # never a stale /tmp/ray/ray_current_cluster
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert "address" not in backend_config(cfg)["init_args"]  # ray.init() reads RAY_ADDRESS itself


def test_the_device_reaches_the_clients_and_old_configs_ran_on_the_cpu(two_gpus, tmp_path):
    cfg = load_run_config(["device=cuda:1", f"runs_dir={tmp_path}"])
    assert cfg.client_job().device == "cuda:1"
    assert load_run_config([]).device == "auto"
    written = cfg.to_dict()
    del written["device"]
    assert validate(yaml.safe_load(yaml.safe_dump(written))).device == "cpu"


def test_cpu_state_is_on_the_cpu_and_equals_the_model():
    model = build_model("cnn", (3, 28, 28), 10, seed=0)
    assert model_device(model) == torch.device("cpu")
    state = cpu_state(model)
    assert state.keys() == model.state_dict().keys()
    assert all(v.device.type == "cpu" and torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("aggregator", ["mean", "agre"])
def test_a_gpu_run_agrees_with_the_cpu_run(tmp_path, aggregator):
    """The same job on cuda and on cpu: same shapes and files, accuracies within a few points (GPU kernels are
    not bitwise equal to the CPU's, and SGD amplifies the differences)."""
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = load_run_config([*FAST, f"aggregator={aggregator}", f"device={device}",
                               f"runs_dir={tmp_path / device}"])
        summary = run_federation(InProcessGrid(client_app, cfg.federation.num_clients), cfg)
        runs[device] = read_metrics(summary["run_dir"])
    for cpu, gpu in zip(runs["cpu"], runs["cuda"], strict=True):
        assert cpu["round"] == gpu["round"]
        assert abs(cpu["test"]["accuracy"] - gpu["test"]["accuracy"]) < 0.05
    assert torch.load(f"{summary['run_dir']}/student.pt")["head.weight"].device.type == "cpu"
