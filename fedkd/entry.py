"""The ``fedkd`` command's entry point: a stop signal that comes while the heavy modules load or the config is
checked ends the command quietly (nothing is written before the run directory, which ``fedkd.cli`` guards)."""

from __future__ import annotations

import os
import signal
import sys


def _stopped_before_start(signum: int, frame: object) -> None:
    sys.stdout.write("fedkd: stopped before the run started; nothing was written\n")
    sys.stdout.flush()
    os._exit(130)


def main() -> None:
    """``fedkd [overrides]`` runs a federation, ``fedkd report ...`` tabulates runs (both in fedkd.cli)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _stopped_before_start)
    from fedkd.cli import main as cli_main

    cli_main()
