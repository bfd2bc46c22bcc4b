"""Flower's share of the console during ``fedkd`` runs: its INFO, WARNING and ERROR lines once each, no DEBUG.

Why it was noisy: opacus (imported by fedkd.privacy) calls ``logging.basicConfig`` at import, which gives the root
logger a stderr handler with no level. Flower's logger ``flwr`` is at DEBUG with its own INFO console handler and
propagates to the root, so every record was printed by the root's handler as well: DEBUG lines that Flower itself
would not show, and each warning twice. ``run_simulation`` also warns on every call that it is deprecated in
favour of ``flwr run`` (which ``make flwr-run`` uses); the simulator keeps it on purpose.

A Ray worker that died is logged by Flower as an error with a traceback; the round loop asks the client again and
says so in one line, so those records are dropped too.

``FEDKD_FLOWER_LOG=debug`` turns Flower's DEBUG lines (with timestamps), Ray's INFO output, the deprecation
warning and the lost-worker tracebacks back on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

FLOWER_LOG_ENV = "FEDKD_FLOWER_LOG"
RUN_SIMULATION_DEPRECATION = "The `run_simulation` function is deprecated"


def flower_debug() -> bool:
    """Whether the user asked for Flower's full log (``FEDKD_FLOWER_LOG=debug``)."""
    return os.environ.get(FLOWER_LOG_ENV, "").strip().lower() == "debug"


WORKER_LOSS = ("ActorDiedError", "ActorUnavailableError", "An exception was raised when processing a message by")


def _not_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    return RUN_SIMULATION_DEPRECATION not in record.getMessage()


def _not_worker_loss(record: logging.LogRecord) -> bool:
    """Flower logs a lost Ray worker as an error with its traceback; the round loop asks the client again and
    says so in one line (server/federation.py), so these records are kept for ``FEDKD_FLOWER_LOG=debug``."""
    message = record.getMessage()
    return not any(marker in message for marker in WORKER_LOSS)


def flower_records_once() -> None:
    """In a process that only runs ClientApps (a Ray worker, a SuperNode's app process): Flower's records go to
    its own handler only, so that its warnings are not printed a second time by opacus' root handler."""
    logging.getLogger("flwr").propagate = False


@contextmanager
def flower_console() -> Iterator[bool]:
    """While a simulation runs: Flower's records go to its own console handler only (not also to a root handler),
    and the ``run_simulation`` deprecation is dropped unless ``FEDKD_FLOWER_LOG=debug``. Yields that choice, for
    ``run_simulation(verbose_logging=...)``. The logger is as it was afterwards."""
    logger = logging.getLogger("flwr")
    debug, propagate = flower_debug(), logger.propagate
    logger.propagate = False
    quieted = [] if debug else [_not_run_simulation_deprecation, _not_worker_loss]
    for quiet in quieted:
        logger.addFilter(quiet)
    try:
        yield debug
    finally:
        logger.propagate = propagate
        for quiet in quieted:
            logger.removeFilter(quiet)
