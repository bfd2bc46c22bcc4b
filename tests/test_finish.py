"""``stopping.finish`` ends the process with 130 after the command's finish, and a background thread that fails
because the finish stopped what it talks to (Ray's log subscriber) prints no traceback; before the finish, a
thread's exception is still reported, and so is a failure of the finish itself in the watchdog's thread."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import threading
from fedkd import stopping

def failing_thread():
    def fail():
        raise ConnectionError("the server this thread listened to was stopped")
    thread = threading.Thread(target=fail, name="subscriber")
    thread.start()
    thread.join()

def on_stop():
    failing_thread()
    print("finish ran", flush=True)

with stopping.stop_on_signals(on_stop):
    failing_thread()
    print("before the finish", flush=True)
    stopping.finish()
"""


def test_finish_exits_130_and_drops_only_the_tracebacks_of_threads_failing_during_it():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stdout.split("\n")[:2] == ["before the finish", "finish ran"]
    assert done.stderr.count("Traceback") == 1, done.stderr
    assert "ConnectionError" in done.stderr


BROKEN_FINISH = """
import threading, time
from fedkd import stopping

def on_stop():
    raise RuntimeError("the finish itself failed")

with stopping.stop_on_signals(on_stop):
    threading.Thread(target=stopping.finish, name="watchdog", daemon=True).start()
    time.sleep(2)
"""


def test_a_finish_that_fails_in_its_own_thread_still_prints_why():
    done = subprocess.run([sys.executable, "-c", BROKEN_FINISH], capture_output=True, text=True, timeout=60)
    assert "RuntimeError: the finish itself failed" in done.stderr, done.stderr
