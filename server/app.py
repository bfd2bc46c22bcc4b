"""Flower ServerApp: compose and validate the config, make the run directory, run the round loop."""

from __future__ import annotations

import contextlib
import shlex

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedkd.config import ConfigError, RunConfig
from fedkd.display import RunDisplay, summary_table
from fedkd.results import RunDirectory
from fedkd.stopping import StopRequested
from fedkd.validation import load_run_config, resume_target
from server.strategy import FederatedDistillation

app = ServerApp()


def run_federation(grid: Grid, cfg: RunConfig, run_dir: RunDirectory | None = None,
                   console: Console | None = None, resume: bool = False) -> dict:
    """Run a whole federated distillation on ``grid``; returns the summary (also in run_dir/summary.json).
    With ``resume``, continue the run in ``run_dir`` from its last checkpoint."""
    console = console or Console()
    if run_dir is None:
        run_dir = RunDirectory.create(cfg.runs_dir, cfg.name)
        run_dir.write_config(cfg)
    previous = torch.get_num_threads()
    if cfg.federation.server_threads:
        torch.set_num_threads(cfg.federation.server_threads)  # summation order, hence bits, follow the count
    try:
        with RunDisplay(cfg.federation.num_rounds, console) as display:
            summary = FederatedDistillation(cfg, run_dir, display, resume).run(grid)
    finally:
        torch.set_num_threads(previous)
    console.print(summary_table(summary))
    return summary


def server_app_for(cfg: RunConfig, run_dir: RunDirectory, resume: bool = False) -> ServerApp:
    """A ServerApp bound to an already validated config (the ``fedkd`` command's simulation path)."""
    bound = ServerApp()

    @bound.main()
    def main(grid: Grid, context: Context) -> None:
        # a stop signal reaches the main thread, which stops the processes and reports; this thread only ends
        with contextlib.suppress(StopRequested):
            run_federation(grid, cfg, run_dir, resume=resume)

    return bound


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .``: the same defaults as ``fedkd``; Hydra overrides come in run config ``overrides``, and run
    config ``resume`` (a run directory, as the SuperLink's working directory sees it) continues a killed run."""
    serve(grid, context)


def serve(grid: Grid, context: Context) -> dict:
    resume = str(context.run_config.get("resume", ""))
    overrides = shlex.split(str(context.run_config.get("overrides", "")))
    if not resume:
        return run_federation(grid, load_run_config(overrides))
    if overrides:
        raise ConfigError(f"invalid config: resume continues a run with its own config.yaml; drop the overrides "
                          f"{overrides}")
    cfg, run_dir = resume_target(resume)
    return run_federation(grid, cfg, run_dir, resume=True)
