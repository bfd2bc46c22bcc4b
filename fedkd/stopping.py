"""Stopping a run cleanly on SIGINT or SIGTERM, from any phase and on every engine.

The first signal sets ``STOP`` and raises ``StopRequested`` in the main thread; the round loop, wherever it runs,
checks ``STOP`` while it waits for replies and raises the same. The command then stops every process the run
started (Ray's own included, found as this process's descendants when the run began) and exits with 130. A second
signal exits at once. Every file a run writes is either renamed into place whole or an append-only line that
``fedkd resume`` sets aside when it is cut, so stopping mid-write loses nothing finished.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

import psutil

STOP = threading.Event()
_AT_STOP: list[psutil.Process] = []  # this process's descendants when the first signal came
EXIT_CODE = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """The user asked the run to stop (SIGINT or SIGTERM). A BaseException, as KeyboardInterrupt is: the handlers
    that turn a client's exception into an error reply must not catch it."""


def check_stop() -> None:
    """Raise ``StopRequested`` once a stop signal has arrived."""
    if STOP.is_set():
        raise StopRequested("stopped by a signal")


def _handle(signum: int, frame: object) -> None:
    if STOP.is_set():
        stop_processes(descendants())
        os._exit(EXIT_CODE)
    STOP.set()
    _AT_STOP[:] = descendants()
    raise StopRequested(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop the run (from the main thread only: Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def install_handlers() -> None:
    """Take SIGINT and SIGTERM back after a library (Ray's ``init``) installed its own."""
    for s in SIGNALS:
        signal.signal(s, _handle)


def descendants() -> list[psutil.Process]:
    """Every process this one started, directly or not."""
    return psutil.Process().children(recursive=True)


def started() -> list[psutil.Process]:
    """The processes this run started: those that were its descendants when the signal came (Ray's agents are
    orphaned once its raylet stops) and those that are now."""
    now = descendants()
    return now + [p for p in _AT_STOP if p.pid not in {q.pid for q in now}]


def stop_processes(processes: list[psutil.Process], grace: float = 3.0) -> list[int]:
    """SIGTERM each of ``processes`` still alive, SIGKILL those alive after ``grace`` seconds; the PIDs that had
    to be killed."""
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
            alive.append(process)
    _, left = psutil.wait_procs(alive, timeout=grace)
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(left, timeout=grace)
    return [p.pid for p in left]
