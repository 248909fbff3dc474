"""The exchange side of the harness: the loopback simulator on a fresh port, fast retries."""

from contextlib import contextmanager

from recon_assets.simulator import SimulatorServer

# Retries in tests back off for milliseconds, not seconds.
FAST_RETRIES = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}


@contextmanager
def running_simulator(scenario: str | None = None):
    """The exchange simulator on a fresh loopback port, stopped however the block ends."""
    server = SimulatorServer(port=0, scenario=scenario)
    server.start()
    try:
        yield server
    finally:
        server.stop()
