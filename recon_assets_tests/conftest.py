"""Test harness: one real PostgreSQL server per test session, a clean database per test.

The server is a `LocalPostgres` (the same class the demo uses) in a temporary folder. Migrations
are applied once to a template database; each test gets a fresh copy of it (CREATE DATABASE ...
TEMPLATE), which takes a few milliseconds. The server is stopped by its pid at the end.
"""

import itertools
import os
import queue
import shutil
import tempfile
import threading

import pytest

from recon_assets.local_postgres import LocalPostgres
from recon_assets_tests.harness.exchange import running_simulator
from recon_assets_tests.harness.postgres import create_api_roles, create_migrated_database

TEMPLATE_DB = "recon_template"
# Every test is in exactly one tier (pyproject.toml describes them); `make test-fast` runs
# `unit` and `db`, `make test` runs everything.
TIERS = ("unit", "db", "integration", "browser")
_db_counter = itertools.count()


def pytest_collection_modifyitems(config, items):
    untiered = [item.nodeid for item in items
                if len({m.name for m in item.iter_markers() if m.name in TIERS}) != 1]
    if untiered:
        raise pytest.UsageError(
            f"every test needs exactly one tier marker ({', '.join(TIERS)}); not so for: "
            + ", ".join(untiered[:10]))


class TemplateCopies:
    """Fresh copies of the migrated template database, made ahead of need on a background thread:
    CREATE DATABASE ... TEMPLATE takes about a quarter of a second, nearly all of it in the
    server, so making the next copies while a test runs takes that off the suite's time."""

    def __init__(self, server: LocalPostgres, template: str, ahead: int = 2):
        self._server, self._template = server, template
        self._ready: queue.Queue[str] = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="template-copies", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while not self._stop.is_set():
            name = f"t{os.getpid()}_{next(_db_counter)}"
            self._server.create_database(name, template=self._template)
            while not self._stop.is_set():
                try:
                    self._ready.put(name, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def take(self) -> str:
        return self._ready.get(timeout=60)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def pg_server():
    # Not pytest's tmp_path: its root is private to us, and the server runs as `postgres`.
    base = tempfile.mkdtemp(prefix="recon-test-pg-")
    os.chmod(base, 0o755)
    server = LocalPostgres(os.path.join(base, "data"))
    try:
        server.start()
        create_api_roles(server)
        create_migrated_database(server, TEMPLATE_DB)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def template_copies(pg_server):
    copies = TemplateCopies(pg_server, TEMPLATE_DB)
    yield copies
    copies.close()


@pytest.fixture
def pg_dsn(pg_server, template_copies):
    """DSN of a fresh, migrated database for this test alone."""
    name = template_copies.take()
    yield pg_server.dsn(name)
    pg_server.drop_database(name)


@pytest.fixture
def empty_pg_dsn(pg_server):
    """DSN of a fresh database with no migrations applied."""
    name = f"e{os.getpid()}_{next(_db_counter)}"
    dsn = pg_server.create_database(name)
    yield dsn
    pg_server.drop_database(name)


@pytest.fixture
def sim():
    """A running simulator with no scenario loaded (tests load theirs)."""
    with running_simulator() as server:
        yield server
