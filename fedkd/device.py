"""Where the models run: ``device=auto|cpu|cuda`` (or ``cuda:<index>``), resolved in each process.

The server and every client resolve the name themselves, so ``auto`` means "this process's GPU if it sees one":
a Ray worker that was given ``federation.client_gpus`` sees its share, a SuperNode on a machine without a GPU
runs on its CPU. Models and minibatches live on the device; what crosses the wire, the checkpoints and every
metric stay on the CPU.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from fedkd.config import DEVICE_PATTERN


class DeviceError(RuntimeError):
    """The configured device is not there in this process."""


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when torch sees one, else the CPU; ``cuda[:i]`` must exist."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise DeviceError(f"device={name!r} is not one of auto, cpu, cuda, cuda:<index>")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device={name} but torch sees no CUDA device here (torch {torch.__version__}, CUDA "
                              f"build {torch.version.cuda}, CUDA_VISIBLE_DEVICES="
                              f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); use device=auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device={name} but this process sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def cuda_device_count() -> int:
    """The CUDA devices this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU: what goes into records, checkpoints and student.pt."""
    return {key: value.detach().cpu() for key, value in model.state_dict().items()}
