"""Soft-label aggregators (server), behind a registry: M teachers' logits on the queried transfer points in,
distillation targets (and optional per-example weights) out.

A new aggregator is one module in this package (a class registered in ``AGGREGATORS`` with its parameter
dataclass) plus one YAML file in conf/aggregator/: every module here is imported below, so it registers itself.
"""

from __future__ import annotations

import importlib
import pkgutil

from fedkd.aggregators.base import AGGREGATORS, Aggregator, FixedAggregator

__all__ = ["AGGREGATORS", "Aggregator", "FixedAggregator"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
