"""``fedkd``: compose conf/ with Hydra, validate once, then run the Flower simulation and print the summary.

    fedkd                                   # the default run
    fedkd dataset=mnist_lt partition=dirichlet partition.alpha=0.3 federation.num_clients=5
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from fedkd.config import CONF_DIR, ConfigError, RunConfig, check_against_data, validate
from fedkd.results import RunDirectory, read_summary


def simulate(cfg: RunConfig, console: Console | None = None) -> dict:
    """Run ``cfg`` through Flower's simulation engine (Ray), one SuperNode per client."""
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import server_app_for

    console = console or Console()
    run_dir = RunDirectory.create(cfg.runs_dir, cfg.name)
    run_dir.write_config(cfg)
    console.print(f"fedkd: run directory {run_dir.path}")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=server_app_for(cfg, run_dir),
        client_app=client_app,
        num_supernodes=cfg.federation.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cfg.federation.client_cpus, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False, "log_to_driver": True},
        },
    )
    if not (Path(run_dir.path) / "summary.json").exists():
        raise RuntimeError(f"the simulation ended without a summary in {run_dir.path}; see the log above")
    return read_summary(run_dir.path)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(composed: DictConfig) -> None:
    start = time.perf_counter()
    console = Console()
    try:
        cfg = validate(OmegaConf.to_container(composed, resolve=True))
        check_against_data(cfg)
    except ConfigError as err:
        console.print(f"[bold red]fedkd: {err}[/]", highlight=False)
        sys.exit(2)
    try:
        summary = simulate(cfg, console)
    except RuntimeError as err:
        console.print(f"[bold red]fedkd: {err}[/]", highlight=False)
        sys.exit(1)
    console.print(
        f"fedkd: done in {time.perf_counter() - start:.1f} s wall: accuracy {summary['test']['accuracy']:.4f}, "
        f"worst-group accuracy {summary['test']['worst_group_accuracy']:.4f}; results in {summary['run_dir']}",
        soft_wrap=True,
    )


def main() -> None:
    """Console entry point."""
    _main()
