"""Checkpoints that let a killed run continue: the server's state after every round, and each client's local
state (teacher, ERM base, objective state, DP-SGD accountant history) in a node-local folder.

Every file is written to a temporary name in the same folder and renamed over the old one (``os.replace`` is
atomic on POSIX), so a kill at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

SERVER_CHECKPOINT = "checkpoints/server.pt"
CLIENT_STATE_ENV = "FEDKD_CLIENT_STATE_DIR"
KEEP_CLIENT_ROUNDS = 2  # a client may be one round ahead of the server's last checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not belong to this run."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk: name the file the run was writing, not its temporary name
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> Any:
    """A checkpoint written by ``atomic_save`` (it holds numpy RNG states, hence weights_only=False: load only
    checkpoints this tool wrote)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=False)
    except FileNotFoundError as err:
        raise CheckpointError(f"no checkpoint at {path}") from err
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"cannot read the checkpoint {path}: {type(err).__name__}: {err}") from err


def rng_state(generator: np.random.Generator) -> dict:
    return generator.bit_generator.state


def restore_rng(generator: np.random.Generator, state: dict) -> None:
    generator.bit_generator.state = state


class ClientStateStore:
    """A node's local states, one file per (run key, partition, round) under ``root``; the last
    ``KEEP_CLIENT_ROUNDS`` rounds are kept. ``root`` comes from the node config ``state-dir`` (deployment) or
    the environment variable ``FEDKD_CLIENT_STATE_DIR`` (the ``fedkd`` command sets it to the run directory)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_node(cls, node_config: dict) -> ClientStateStore | None:
        root = node_config.get("state-dir") or os.environ.get(CLIENT_STATE_ENV)
        return cls(root) if root else None

    def _folder(self, run_key: str, partition_id: int) -> Path:
        return self.root / run_key / f"partition-{partition_id}"

    def save(self, run_key: str, partition_id: int, server_round: int, state: dict) -> None:
        folder = self._folder(run_key, partition_id)
        atomic_save(state, folder / f"round-{server_round}.pt")
        for old in folder.glob("round-*.pt"):
            if int(old.stem.split("-")[1]) <= server_round - KEEP_CLIENT_ROUNDS:
                old.unlink(missing_ok=True)

    def load(self, run_key: str, partition_id: int, server_round: int) -> dict:
        path = self._folder(run_key, partition_id) / f"round-{server_round}.pt"
        if not path.exists():
            raise CheckpointError(f"partition {partition_id} has no saved state for round {server_round} of run "
                                  f"{run_key} under {self.root}")
        return load(path)
