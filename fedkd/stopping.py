"""Stopping a run cleanly on SIGINT or SIGTERM, from any phase and on every engine.

The handler only sets ``STOP``: raising from a signal handler can land inside a library's lock handling (Ray's
start-up, the logging module) and leave the process hung. The round loop checks ``STOP`` while it waits for
replies and raises ``StopRequested``, which the command turns into its ``finish`` (stop every process the run
started, Ray's own included, say how to resume, exit 130). Work that does not wait (a teacher training in this
process, Ray shutting down) gets ``GRACE_SECONDS``; then a watchdog calls the same ``finish``. A second signal
finishes at once. Every file a run writes is renamed into place whole or is an append-only line that
``fedkd resume`` sets aside when it was cut, so stopping mid-write loses nothing finished.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import psutil

STOP = threading.Event()
EXIT_CODE = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 2.0

_AT_STOP: list[psutil.Process] = []  # this process's descendants when the first signal came
_FINISH: list[Callable[[], None]] = []  # the command's finish while stop_on_signals is active
_FINISHING = threading.Lock()
_FINISHER: list[threading.Thread] = []  # the thread running the finish


class StopRequested(BaseException):
    """The user asked the run to stop (SIGINT or SIGTERM). A BaseException, as KeyboardInterrupt is: the handlers
    that turn a client's exception into an error reply must not catch it."""


def check_stop() -> None:
    """Raise ``StopRequested`` once a stop signal has arrived."""
    if STOP.is_set():
        raise StopRequested("stopped by a signal")


def finish() -> None:
    """Run the command's finish once (from whichever thread gets here first); it ends the process."""
    if _FINISHING.acquire(blocking=False):
        _FINISHER[:] = [threading.current_thread()]
        threading.excepthook = _quiet_while_finishing
        _FINISH[0]()
        os._exit(EXIT_CODE)
    threading.Event().wait()  # another thread is finishing; it ends the process


def _quiet_while_finishing(args: threading.ExceptHookArgs) -> None:
    """A library's background thread (Ray's log and error subscribers) fails once ``finish`` stops the processes
    it talks to: a consequence of the stop, not news, so no traceback is printed for it. The finishing thread's own
    failure is still printed."""
    if args.thread in _FINISHER:
        threading.__excepthook__(args)


def _watchdog() -> None:
    time.sleep(GRACE_SECONDS)
    finish()


def _handle(signum: int, frame: object) -> None:
    if STOP.is_set():
        threading.Thread(target=finish, daemon=True).start()
        return
    STOP.set()
    _AT_STOP[:] = descendants()
    threading.Thread(target=_watchdog, daemon=True).start()


@contextlib.contextmanager
def stop_on_signals(on_stop: Callable[[], None]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM stop the run and ``on_stop`` (which reports and stops the
    processes) runs before the process exits with 130. Main thread only: Python delivers signals there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()
    _FINISH[:] = [on_stop]
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    try:
        yield
    finally:
        _FINISH.clear()
        for s, handler in previous.items():
            signal.signal(s, handler)


def install_handlers() -> None:
    """Inside ``stop_on_signals``: take SIGINT and SIGTERM back after a library (Ray's ``init``) installed its own."""
    if not _FINISH or threading.current_thread() is not threading.main_thread():
        return
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


def stop_processes(processes: list[psutil.Process], grace: float = 1.5) -> list[int]:
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
