"""``fedkd``: compose conf/ with Hydra, validate once, then run the Flower simulation and print the summary.

    fedkd                                   # the default run
    fedkd dataset=mnist_lt partition=dirichlet partition.alpha=0.3 federation.num_clients=5
    fedkd resume=runs/2026-11-24/10-00-00_cmnist_agre_fed_s0  # continue a killed run from its last checkpoint
    fedkd -m aggregator=mean,agre seed=0,1,2   # a sweep: jobs one after another, under multirun/<date>/<time>/
    fedkd -m +study=aggregators                # a study (conf/study/): jobs under studies/<name>/, rerun-safe
    fedkd report runs/2026-11-24 [--out DIR]   # table and plots of finished runs (fedkd.report)
    fedkd report studies/aggregators           # a study's report (fedkd.study_report)
    fedkd audit studies/privacy                # membership inference on finished runs' teachers (fedkd.audit)
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from fedkd import stopping
from fedkd.checkpoint import CLIENT_STATE_ENV, SERVER_CHECKPOINT, CheckpointError, load
from fedkd.conf_dir import CONF_DIR
from fedkd.config import ConfigError, RunConfig
from fedkd.console import flower_console
from fedkd.results import SUMMARY_FILE, RunDirectory, read_summary
from fedkd.study import (
    JOB_FILE,
    StudyConfig,
    StudyError,
    job_state,
    parse_study,
    register_job_dir_resolver,
    sweep_overrides,
    write_study_file,
)
from fedkd.teacher_store import TEACHER_STORE_ENV
from fedkd.validation import check_against_data, resume_target, validate

CLIENT_STATE_DIR = "client_state"
_COMPOSED = False  # whether Hydra composed the config and called _main


def backend_config(cfg: RunConfig) -> dict:
    """Flower's Ray backend settings: each simulated client reserves ``federation.client_cpus`` CPUs and
    ``federation.client_gpus`` GPUs (a fraction packs several clients onto one GPU). Ray joins an existing
    cluster only when ``RAY_ADDRESS`` names one: otherwise ``ray.init()`` would also join whatever cluster
    /tmp/ray/ray_current_cluster names, which a `ray start` stopped without `ray stop` leaves pointing at
    nothing, so the run starts its own local instance."""
    init_args: dict = {"include_dashboard": False, "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        init_args["address"] = "local"
    # Ray restarts a worker that died (max_restarts): the clients' states live with their nodes in this process,
    # and the round loop asks again the clients whose message it lost (server/federation.py)
    return {
        "client_resources": {"num_cpus": cfg.federation.client_cpus, "num_gpus": cfg.federation.client_gpus,
                             "max_restarts": -1},
        "init_args": init_args,
    }


def simulate(cfg: RunConfig, console: Console | None = None, run_dir: RunDirectory | None = None,
             resume: bool = False) -> dict:
    """Run ``cfg`` through Flower's simulation engine (Ray), one SuperNode per client, or with
    ``engine=inprocess`` on the in-process grid (the same ClientApp and round loop, no Ray); with ``resume``,
    continue the run in ``run_dir`` from its last checkpoint. The simulated clients keep their states in the run
    directory (``client_state/``), which is what lets a resumed run pick up their teachers."""
    from clients.app import app as client_app

    console = console or Console()
    if run_dir is None:
        run_dir = RunDirectory.create(cfg.runs_dir, cfg.name)
        run_dir.write_config(cfg)
    console.print(f"fedkd: {'resuming' if resume else 'run'} directory {run_dir.path}")
    state_dir = str((run_dir.path / CLIENT_STATE_DIR).resolve())
    store = {TEACHER_STORE_ENV: str(Path(cfg.teacher_store_dir).resolve()) if cfg.teacher_store_dir else None}
    if cfg.engine == "inprocess":
        from server.app import run_federation
        from server.inprocess import InProcessGrid

        with environment(store):
            return run_federation(InProcessGrid(client_app, cfg.federation.num_clients, state_dir=state_dir), cfg,
                                  run_dir, console, resume)
    from flwr.simulation import run_simulation

    from server.app import server_app_for

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    backend = backend_config(cfg)
    with flower_console() as verbose, environment({CLIENT_STATE_ENV: state_dir, **store}):
        start_ray(backend["init_args"])
        run_simulation(
            server_app=server_app_for(cfg, run_dir, resume),
            client_app=client_app,
            num_supernodes=cfg.federation.num_clients,
            backend_config=backend,
            verbose_logging=verbose,
        )
    stopping.check_stop()  # the round loop ended on a stop signal
    if not (Path(run_dir.path) / SUMMARY_FILE).exists():
        raise RuntimeError(f"the simulation ended without a summary in {run_dir.path}; see the log above")
    return read_summary(run_dir.path)


@contextlib.contextmanager
def environment(variables: dict[str, str | None]) -> Iterator[None]:
    """Set these environment variables (None: unset) for the run and its Ray workers, which inherit them
    (``FEDKD_CLIENT_STATE_DIR``, ``FEDKD_TEACHER_STORE_DIR``); restore them afterwards."""
    previous = {name: os.environ.get(name) for name in variables}
    try:
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_ray(init_args: dict) -> None:
    """Start Ray here, as Flower's Ray backend would (its workers see this process's ``sys.path``), so that the
    backend finds it running; then take SIGINT and SIGTERM back from the handler ``ray.init`` installs, which
    would exit without stopping the round loop."""
    import ray

    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **init_args)
    stopping.install_handlers()
    stopping.check_stop()


def resume_hint(run_dir: RunDirectory | None) -> str:
    """What an interrupted run leaves and how to continue it."""
    if run_dir is None:
        return "no run directory was made; nothing to resume"
    checkpoint = run_dir.path / SERVER_CHECKPOINT
    if not checkpoint.exists():
        return f"no round had finished ({run_dir.path} holds no checkpoint): start the run again"
    try:
        done = f"round {load(checkpoint)['round']}'s checkpoint"
    except CheckpointError:
        done = "the last finished round's checkpoint"
    return f"{done} is in {checkpoint}: continue with `fedkd resume={run_dir.path}`"


def _sweep_run_directory(cfg: RunConfig) -> RunDirectory | None:
    """In a Hydra multirun (``fedkd -m``), the job's own folder ``multirun/<date>/<time>/<job>_<name>`` is its run
    directory; None in a single run (a fresh ``runs/<date>/<time>_<name>``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    path = Path(hydra_cfg.runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise ConfigError(f"invalid config: hydra.sweep.dir: the job folder {path} is not empty; a run never "
                          "overwrites another: pick a new hydra.sweep.dir")
    run_dir = RunDirectory(path)
    run_dir.write_config(cfg)
    return run_dir


def _job_overrides() -> dict[str, str]:
    """A multirun job's own sweep overrides (nothing outside a multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    return sweep_overrides(list(hydra_cfg.overrides.task)) if hydra_cfg.mode == RunMode.MULTIRUN else {}


def _study_job(study: StudyConfig, cell: str | None, cfg: RunConfig, console: Console
               ) -> tuple[RunConfig | None, RunDirectory | None, bool]:
    """A study's job (``fedkd -m +study=<name>``): its folder ``studies/<name>/<overrides>`` is skipped when it
    holds a finished run, resumed from its checkpoint when it holds a killed one, and started again when no round
    of it had finished; a job outside the seeds its method is reported on is not run (config None)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        raise StudyError(f"invalid config: study: a study is a sweep; run it with `fedkd -m +study={study.name}`")
    overrides = _job_overrides()
    sweeper = OmegaConf.to_container(hydra_cfg.sweeper)
    write_study_file(Path(hydra_cfg.sweep.dir), study, sweeper.get("params") or {}, sweeper.get("cells"))
    folder = Path(hydra_cfg.runtime.output_dir)
    label = ",".join(f"{k}={v}" for k, v in overrides.items())
    method = study.label(overrides, cell)
    if not study.runs_seed(method, cfg.seed):
        console.print(f"fedkd: study {study.name}: {label}: not run ({method} is reported on seeds "
                      f"{study.seeds_of[method]})", soft_wrap=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # the empty folder Hydra made for the job
        return None, None, False
    state = job_state(folder, cfg)
    if state == "finished":
        console.print(f"fedkd: study {study.name}: {label}: finished before, skipped ({folder})", soft_wrap=True)
        return None, None, False
    run_dir = RunDirectory(folder)
    if state == "resume":
        return (*resume_target(folder), True)
    folder.mkdir(parents=True, exist_ok=True)
    if state == "restart":
        run_dir.set_aside_metrics_after(0)
    run_dir.write_config(cfg)
    job = {"study": study.name, **({"cell": cell} if cell else {}), "overrides": overrides}
    (folder / JOB_FILE).write_text(yaml.safe_dump(job, sort_keys=False))
    return cfg, run_dir, False


def _config_or_exit(composed: DictConfig, console: Console) -> tuple[RunConfig | None, RunDirectory | None, bool]:
    """The validated config (None: a study's job with nothing to run), the run directory to use (None: a fresh
    one) and whether it is a resume."""
    try:
        if composed.get("resume") is None:
            raw = OmegaConf.to_container(composed, resolve=True)
            study = raw.pop("study", None)
            if study is not None:
                cell = study.pop("cell", None)  # the study sweeper's cell of this job
                study = parse_study(study)
                raw["baselines"] = {**raw.get("baselines", {}), **study.baselines_of(_job_overrides())}
            cfg = validate(raw)
            check_against_data(cfg)
            if study is not None:
                return _study_job(study, cell, cfg, console)
            return cfg, _sweep_run_directory(cfg), False
        from hydra.core.hydra_config import HydraConfig

        others = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
        if others:
            raise ConfigError(f"invalid config: resume continues a run with its own config.yaml; drop the other "
                              f"overrides {others}")
        return (*resume_target(composed.resume), True)
    except (ConfigError, StudyError) as err:
        console.print(f"[bold red]fedkd: {err}[/]", highlight=False, soft_wrap=True)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(composed: DictConfig) -> None:
    global _COMPOSED
    _COMPOSED = True
    start = time.perf_counter()
    console = Console()
    cfg, run_dir, resume = _config_or_exit(composed, console)
    if cfg is None:
        return
    made: list[RunDirectory] = [run_dir] if run_dir is not None else []

    def on_stop() -> None:
        left = stopping.stop_processes(stopping.started())
        console.print(f"[bold yellow]fedkd: stopped; {resume_hint(made[0] if made else None)}[/]",
                      highlight=False, soft_wrap=True)
        if left:
            console.print(f"fedkd: killed processes that did not stop within seconds: {left}", soft_wrap=True)
        sys.stdout.flush()

    with stopping.stop_on_signals(on_stop):
        try:
            if not made:
                made.append(RunDirectory.create(cfg.runs_dir, cfg.name))
                made[0].write_config(cfg)
            summary = simulate(cfg, console, made[0], resume=resume)
        except stopping.StopRequested:
            stopping.finish()
        except OSError as err:
            console.print(f"[bold red]fedkd: {write_error(err, made[0] if made else None)}[/]", highlight=False,
                          soft_wrap=True)
            sys.exit(1)
        except RuntimeError as err:
            console.print(f"[bold red]fedkd: {err}[/]", highlight=False, soft_wrap=True)
            sys.exit(1)
    console.print(
        f"fedkd: done in {time.perf_counter() - start:.1f} s wall: accuracy {summary['test']['accuracy']:.4f}, "
        f"worst-group accuracy {summary['test']['worst_group_accuracy']:.4f}; results in {summary['run_dir']}",
        soft_wrap=True,
    )


def write_error(err: OSError, run_dir: RunDirectory | None) -> str:
    """One line for a file the run could not write (a full disk, a folder made read-only): which file, why, and
    that the run's finished rounds are kept."""
    where = err.filename or (run_dir.path if run_dir else "the run directory")
    return (f"cannot write {where}: {err.strerror or err}; free space or choose another runs_dir (nothing was "
            f"overwritten); {resume_hint(run_dir)}")


register_job_dir_resolver()  # here, not in main(): a parallel launcher's workers import this module to run a job


def _register_study_sweeper() -> None:
    """Hydra finds its plugins by listing the ``hydra_plugins`` namespace, which an editable install cannot list:
    register the study sweeper (``hydra/sweeper: study``) by hand; importing it stores its config."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.fedkd_study_sweeper.study_sweeper import StudySweeper

    Plugins.instance().register(StudySweeper)


def main() -> None:
    """Console entry point. ``fedkd report ...`` and ``fedkd audit ...`` are dispatched before Hydra sees the
    command line: they have their own options (argparse), which Hydra would reject as overrides."""
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from fedkd.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "audit":
        from fedkd.audit import main as audit_main

        sys.exit(audit_main(sys.argv[2:]))
    global _COMPOSED
    _COMPOSED = False
    _register_study_sweeper()
    try:
        _main()
    except SystemExit as err:
        if err.code == 1 and not _COMPOSED:
            sys.exit(2)  # Hydra printed why it could not compose (an unknown preset): bad input, as ours
        raise
