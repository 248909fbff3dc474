"""Signals for the servers this project starts and runs.

Shells on these machines start background processes with SIGINT and SIGTERM ignored, and
children inherit that. So children get their dispositions reset (`reset_signals`, a
`preexec_fn`), and our own long-running commands take the two signals back explicitly
(`stop_on_signals`).
"""

import signal
import threading
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
