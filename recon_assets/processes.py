"""Signals for the servers this project starts and runs.

Shells on these machines start background processes with SIGINT and SIGTERM ignored, and
children inherit that. So children get their dispositions reset (`reset_signals`, a
`preexec_fn`), and our own long-running commands take the two signals back explicitly
(`stop_on_signals`).
"""

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def reset_signals() -> None:
    """Default signal dispositions, for a child process (use as Popen's preexec_fn)."""
    for sig in (*STOP_SIGNALS, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGINT (Ctrl-C) or SIGTERM sets while the block runs; the previous
    handlers come back afterwards. Outside the main thread, where Python allows no handler,
    the event is only set by whoever holds it."""
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Stop `proc` (started in a session of its own) and everything in its process group: the
    code server and run workers of `dagster dev` too, which may outlive it by a few seconds; what
    is still there after the grace is killed."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the group?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(10)
