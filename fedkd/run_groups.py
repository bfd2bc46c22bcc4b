"""Finished runs read back from their folders and grouped by the config values that differ between them: what
``fedkd report``'s table (fedkd.report) and plots (fedkd.plots) are made of.
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedkd.results import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_metrics, read_summary

EXCLUDED_KEYS = frozenset({"seed", "name", "runs_dir", "resume"})
PATH_LIKE = re.compile(r"(^|_)(dir|root|path|file)s?$")
BETA_KEY = "student.beta"


@dataclass(frozen=True)
class Run:
    """One finished run directory: its resolved config, summary.json and metrics.jsonl records."""

    path: Path
    config: dict
    summary: dict
    records: list[dict]

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


@dataclass(frozen=True)
class Metric:
    """A column of the table: how to read it from summary.json and how to print it."""

    key: str
    title: str
    fmt: str
    read: Callable[[dict], float | None]


METRICS = (
    Metric("accuracy", "accuracy", ".4f", lambda s: s["test"]["accuracy"]),
    Metric("worst_group_accuracy", "WGA", ".4f", lambda s: s["test"]["worst_group_accuracy"]),
    Metric("mean_group_accuracy", "mean-group acc.", ".4f", lambda s: s["test"].get("mean_group_accuracy")),
    Metric("two_group_worst_group_accuracy", "WGA (aligned / conflicting)", ".4f",
           lambda s: s["test"].get("two_group_worst_group_accuracy")),
    Metric("epsilon_spent", "ε spent", ".3g", lambda s: s.get("epsilon_spent")),  # the data-independent guarantee
    Metric("epsilon_data_dependent_classic", "ε data-dependent (classic; not releasable)", ".3g",
           lambda s: (s.get("privacy") or {}).get("epsilon_data_dependent_classic")),
    Metric("epsilon_released", "ε released (smooth sensitivity)", ".3g",
           lambda s: ((s.get("privacy") or {}).get("smooth_sensitivity") or {}).get("epsilon_released")),
    Metric("soft_labels_queried", "soft labels", ".0f",
           lambda s: s.get("communication", {}).get("soft_labels_queried")),
    Metric("uplink_ratio_to_fedavg", "uplink / FedAvg", ".3g",
           lambda s: s.get("communication", {}).get("uplink_ratio_to_fedavg")),
)
METRIC = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Group:
    """Runs that share every grouping value (typically the seeds of one method)."""

    overrides: dict[str, Any]
    runs: list[Run]

    @property
    def label(self) -> str:
        return override_label(self.overrides)

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]

    def values(self, metric: str) -> list[float]:
        """The metric of every run that has it (ε is None without privacy)."""
        read = METRIC[metric].read
        return [float(v) for r in self.runs if (v := read(r.summary)) is not None]


# --- collecting runs ------------------------------------------------------------------------------------------


def find_run_dirs(patterns: Sequence[str]) -> list[Path]:
    """Every run directory at or under the given directories or globs (recursively: ``runs/<date>/<time>_<name>/``
    and Hydra multirun folders alike), once each, in path order."""
    found: dict[Path, Path] = {}
    for pattern in patterns:
        roots = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
        for root in map(Path, roots):
            configs = [root] if root.name == CONFIG_FILE else (sorted(root.rglob(CONFIG_FILE)) if root.is_dir() else [])
            for config in configs:
                if _is_run_config(config):
                    found.setdefault(config.parent.resolve(), config.parent)
    return sorted(found.values())


def _is_run_config(path: Path) -> bool:
    """A resolved fedkd config (what a run writes), not a Hydra source file like conf/config.yaml, which has
    ``defaults`` and no sections filled in."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "defaults" not in data and "seed" in data and "federation" in data


def load_runs(run_dirs: Iterable[Path]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The finished runs, and the others with the reason they were skipped (a killed or running run has no
    summary.json; its partial numbers would bias the means)."""
    runs, skipped = [], []
    for path in run_dirs:
        if not (path / SUMMARY_FILE).is_file():
            skipped.append((path, f"incomplete: no {SUMMARY_FILE} (killed, or still running)"))
            continue
        try:
            config = yaml.safe_load((path / CONFIG_FILE).read_text())
            summary = read_summary(path)
            records = read_metrics(path) if (path / METRICS_FILE).is_file() else []
        except (OSError, ValueError, yaml.YAMLError) as err:
            skipped.append((path, f"unreadable: {err}"))
            continue
        runs.append(Run(path, config, summary, records))
    return runs, skipped


# --- grouping ---------------------------------------------------------------------------------------------------


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become tuples so that values can key a group."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = tuple(value) if isinstance(value, list) else value
    return flat


def is_grouping_key(key: str) -> bool:
    """Seeds are what a group averages over; names and paths differ between any two runs and say nothing."""
    return key not in EXCLUDED_KEYS and not PATH_LIKE.search(key.rsplit(".", 1)[-1])


ABSENT = object()  # a key the config does not have: a parameter of a component the run did not choose


def varying_keys(flat_configs: Sequence[dict[str, Any]]) -> list[str]:
    """The grouping keys whose values are not the same in every config that has them. A key that only some configs
    have is a parameter of one component (``aggregator.biased`` of agre): it follows the section's choice, and
    varies only where the configs that have it disagree."""
    keys = sorted({k for flat in flat_configs for k in flat}, key=_key_order)
    return [k for k in keys if is_grouping_key(k) and len({repr(flat[k]) for flat in flat_configs if k in flat}) > 1]


def _key_order(key: str) -> tuple[str, bool, str]:
    """By section, the section's choice (``aggregator.name``) first: labels then read ``aggregator=agre
    aggregator.biased=mean_bases``, as one would type them."""
    return key.split(".", 1)[0], not key.endswith(".name"), key


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs grouped by the values of the varying keys, groups in the order of those values."""
    flats = [flatten(r.config) for r in runs]
    keys = varying_keys(flats)
    buckets: dict[tuple, list[Run]] = {}
    for run, flat in zip(runs, flats, strict=True):
        buckets.setdefault(tuple(flat.get(k, ABSENT) for k in keys), []).append(run)
    ordered = sorted(buckets.items(), key=lambda item: [_sort_value(v) for v in item[0]])
    return [Group({k: v for k, v in zip(keys, values, strict=True) if v is not ABSENT},
                  sorted(members, key=lambda r: (_sort_value(r.seed), r.path)))
            for values, members in ordered]


def _sort_value(value: Any) -> tuple[int, float, str]:
    """Numbers in numeric order, then everything else by text; None (and a key the run lacks) first."""
    if value is None or value is ABSENT:
        return (0, 0.0, "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def override_label(overrides: dict[str, Any]) -> str:
    """Hydra override syntax, as the user would type it: ``aggregator=agre student.beta=0.5``."""
    if not overrides:
        return "all runs"
    return " ".join(f"{_override_key(k)}={format_value(v)}" for k, v in overrides.items())


def _override_key(key: str) -> str:
    """``aggregator.name`` is the config group choice ``aggregator``."""
    return key[: -len(".name")] if key.endswith(".name") else key


def format_value(value: Any) -> str:
    """A config value as it reads in an override: null, true, 0.5."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def curves(groups: Sequence[Group], swept: Iterable[str]) -> dict[str, list[Group]]:
    """Groups that differ only in the ``swept`` keys, by the label of their other overrides: the lines of a sweep
    plot (one line per query strategy, per privacy mechanism, per β curve)."""
    swept = set(swept)
    lines: dict[str, list[Group]] = {}
    for group in groups:
        rest = {k: v for k, v in group.overrides.items() if k not in swept}
        lines.setdefault(override_label(rest), []).append(group)
    return lines


def beta_curves(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """The robust-KD trade-off curves: groups that differ only in student.beta, ordered by beta (lines of one
    point are no curve and are left out)."""
    if not any(BETA_KEY in g.overrides for g in groups):
        return {}
    lines = curves(groups, {BETA_KEY})
    return {label: sorted(members, key=lambda g: _sort_value(g.overrides[BETA_KEY]))
            for label, members in lines.items() if len(members) > 1}



def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1); the std is NaN for one value (no spread to estimate), both NaN for none. The
    one ± convention of fedkd: `fedkd report`'s table and the study reports of bench/ all read it."""
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan

