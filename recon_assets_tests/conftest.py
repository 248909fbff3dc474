"""Test harness: one real PostgreSQL server per test session, a clean database per test.

The server is a `LocalPostgres` (the same class the demo uses) in a temporary folder. Migrations
are applied once to a template database; each test gets a fresh copy of it (CREATE DATABASE ...
TEMPLATE), which takes a few milliseconds. The server is stopped by its pid at the end.
"""

import itertools
import os
import shutil
import tempfile
from contextlib import contextmanager

import pytest

from recon_assets.db.migrate import migrate
from recon_assets.local_postgres import LocalPostgres
from recon_assets.simulator import SimulatorServer

TEMPLATE_DB = "recon_template"
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server():
    # Not pytest's tmp_path: its root is private to us, and the server runs as `postgres`.
    base = tempfile.mkdtemp(prefix="recon-test-pg-")
    os.chmod(base, 0o755)
    server = LocalPostgres(os.path.join(base, "data"))
    try:
        server.start()
        server.create_database(TEMPLATE_DB)
        migrate(server.dsn(TEMPLATE_DB))
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server):
    """DSN of a fresh, migrated database for this test alone."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    dsn = pg_server.create_database(name, template=TEMPLATE_DB)
    yield dsn
    pg_server.drop_database(name)


@pytest.fixture
def empty_pg_dsn(pg_server):
    """DSN of a fresh database with no migrations applied."""
    name = f"e{os.getpid()}_{next(_db_counter)}"
    dsn = pg_server.create_database(name)
    yield dsn
    pg_server.drop_database(name)


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


@pytest.fixture
def sim():
    """A running simulator with no scenario loaded (tests load theirs)."""
    with running_simulator() as server:
        yield server
