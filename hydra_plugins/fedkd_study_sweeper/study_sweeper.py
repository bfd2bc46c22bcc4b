"""``hydra/sweeper: study``: Hydra's basic sweeper, plus named cells.

A study that varies one factor at a time around a base, or whose methods do not form a product (the active study's
budgets beside its uncompressed and compressed full-pool references), is a union of grids, not one grid. Each cell
names a few sweep axes of its own (``hydra.sweeper.cells.<name>: {axis: values}``); its jobs are the product of the
shared axes (``hydra.sweeper.params``) with the cell's, the cell winning on a shared axis, a null value removing
one. The command line replaces a shared axis (``seed=0,1``) and narrows a cell's own: ``query=random,margin`` keeps
those values of a cell that sweeps ``query`` and drops a cell that has neither. Every job carries its cell's name as
``study.cell``.
``hydra.sweeper.select=[a,b]`` runs only those cells. Without cells this is the basic sweeper.

(No ``from __future__ import annotations``: Hydra's plugin scan executes this module outside ``sys.modules``, where
a dataclass cannot resolve annotations written as strings.)
"""

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins import basic_sweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
CELL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CELL_KEY = "+study.cell"


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.fedkd_study_sweeper.study_sweeper.StudySweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    cells: dict[str, Any] = field(default_factory=dict)  # (a None here would refuse a merge into it)
    select: list[str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="study", node=StudySweeperConf, provider="fedkd")


def _values(parser: OverridesParser, key: str, value: Any) -> list[str]:
    """The values of ``key=value`` as Hydra's sweeper writes them (a sweep: each of its values)."""
    (override,) = parser.parse_overrides([f"{key}={value}"])
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [override.get_value_element_as_str()]


def cell_arguments(params: dict[str, Any], cells: dict[str, Any], select: list[str] | None,
                   arguments: list[str]) -> list[tuple[str, list[str]]]:
    """Per selected cell, in order: its name and the override strings whose product is its jobs (none for a cell
    that the command line narrows to nothing)."""
    parser = OverridesParser.create()
    for name, axes in cells.items():
        if not CELL_NAME.fullmatch(str(name)):
            raise HydraException(f"hydra.sweeper.cells.{name}: a cell's name is 1 to 64 letters, digits or ._-")
        if not isinstance(axes, dict):
            raise HydraException(f"hydra.sweeper.cells.{name} = {axes!r}: must map sweep axes to values")
    unknown = sorted(set(select or []) - set(cells))
    if unknown:
        raise HydraException(f"hydra.sweeper.select: no cell named {unknown}; the cells: {list(cells)}")
    given = {}
    for argument in arguments:
        key, _, value = argument.partition("=")
        given[key] = (argument, value)
    out = []
    for name, axes in cells.items():
        if select and name not in select:
            continue
        own = {}
        for key, value in axes.items():
            if value is not None and key in given:  # the command line narrows the cell's own axis
                wanted = _values(parser, key, given[key][1])
                value = [v for v in _values(parser, key, value) if v in wanted]
                if not value:
                    break
                value = ",".join(value)
            own[key] = value
        else:
            merged = {**params, **own}
            rest = [arg for key, (arg, _) in given.items() if key not in own]
            out.append((name, [*(f"{k}={v}" for k, v in merged.items() if v is not None), *rest]))
    return out


class StudySweeper(Sweeper):
    """Hydra's basic sweeper plus cells. It reuses the basic sweeper's product and chunking, not its class: Hydra's
    plugin scan executes hydra's core plugin modules a second time, which breaks a subclass's ``super()``."""

    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None,
                 cells: dict[str, Any] | None = None, select: list[str] | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.cells = OmegaConf.to_container(cells) if OmegaConf.is_config(cells) else dict(cells or {})
        self.select = list(select) if select is not None else None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def jobs(self, arguments: list[str]) -> list[list[str]]:
        """Every job's overrides: the product of the grid, or each cell's product with its name last; two cells
        making one job is an error."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        product = basic_sweeper.BasicSweeper.split_arguments
        if not self.cells:
            return product(parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments]),
                           None)[0]
        made: dict[frozenset, str] = {}
        jobs = []
        for name, args in cell_arguments(self.params, self.cells, self.select, list(arguments)):
            for job in product(parser.parse_overrides(args), None)[0]:
                other = made.setdefault(frozenset(job), name)
                if other != name:
                    raise HydraException(f"cells {other} and {name} make the same job {sorted(job)}: a command-line "
                                         "override made them equal; pick cells with hydra.sweeper.select=[...]")
                jobs.append([*job, f"{CELL_KEY}={name}"])
        return jobs

    def sweep(self, arguments: list[str]) -> Any:
        jobs = self.jobs(arguments)
        batches = list(basic_sweeper.BasicSweeper.split_overrides_to_chunks(jobs, self.max_batch_size))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(f"study sweep: {len(jobs)} jobs in {len(batches)} batches")
        returns, initial_job_idx = [], 0
        for batch in batches:
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            for r in results:
                _ = r.return_value  # raises where a job failed
            initial_job_idx += len(batch)
            returns.append(results)
        return returns
