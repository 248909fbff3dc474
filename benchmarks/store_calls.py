"""Benchmark of a trading-database store call (issue 16): `PostgresStore.connect()` keeping its
connections for the next call (`_IdleConnections`) against the baseline of a new connection per
call (what every store call did before), on a real PostgreSQL started here.

The call is what a cycle makes about 70 times an account: `ReconStore.latest_succeeded_cycle`
(one SELECT). Both shapes are timed round-robin in one process (so a burst of load from other
work hits them alike); the client's CPU (this process) and the server's (the PostgreSQL
processes, from /proc) are both counted, since a new connection costs the server a forked
backend.

    .venv/bin/python benchmarks/store_calls.py [--calls 500] [--rounds 5]

Prints a table; writes nothing into the repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from recon_assets.db.migrate import migrate  # noqa: E402
from recon_assets.local_postgres import LocalPostgres  # noqa: E402
from recon_assets.resources.database import PostgresStore  # noqa: E402
from recon_assets.resources.recon_store import ReconStore  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(root_pid: int) -> float:
    """CPU seconds (user + system) of a process and its children alive or reaped (a backend that
    exited is counted in its parent's cutime/cstime once reaped)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        if pid == root_pid or ppid == root_pid:
            user, system = int(fields[11]), int(fields[12])
            children = int(fields[13]) + int(fields[14]) if pid == root_pid else 0
            total += (user + system + children) / TICKS
    return total


class _NewConnectionPerCall(PostgresStore):
    """The baseline: a fresh connection for every call, closed after it (psycopg's `with conn`)."""

    def connect(self, autocommit: bool = False):
        conn = psycopg.connect(
            self.dsn, autocommit=autocommit, row_factory=dict_row,
            connect_timeout=self.connect_timeout_s, application_name="recon-assets",
            options=f"-c statement_timeout={self.statement_timeout_ms} "
                    f"-c lock_timeout={self.lock_timeout_ms}")
        return conn  # psycopg's Connection is its own context manager: commit, then close


def measure(store: PostgresStore, calls: int, postmaster_pid: int) -> tuple[float, float, float]:
    recon = ReconStore(store)
    wall0, cpu0, pg0 = time.perf_counter(), time.process_time(), _tree_cpu_s(postmaster_pid)
    for _ in range(calls):
        recon.latest_succeeded_cycle("acct000")
    return (time.perf_counter() - wall0, time.process_time() - cpu0,
            _tree_cpu_s(postmaster_pid) - pg0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    base = tempfile.mkdtemp(prefix="recon-bench-store-")
    os.chmod(base, 0o755)
    pg = LocalPostgres(os.path.join(base, "data"))
    try:
        pg.start()
        dsn = pg.create_database("trading")
        migrate(dsn)
        shapes = {"new connection per call (baseline)": _NewConnectionPerCall(dsn=dsn),
                  "connection kept for the next call": PostgresStore(dsn=dsn)}
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in shapes}
        for store in shapes.values():  # warm-up: the server's caches, the first connection
            measure(store, 20, pg.process.pid)
        for _ in range(args.rounds):
            for name, store in shapes.items():
                results[name].append(measure(store, args.calls, pg.process.pid))
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"{args.calls} store calls (ReconStore.latest_succeeded_cycle), {args.rounds} rounds "
          "round-robin; medians per call")
    print(f"{'shape':<38} {'wall ms':>8} {'client cpu ms':>14} {'server cpu ms':>14}")
    medians = {}
    for name, rows in results.items():
        wall, cpu, server = (statistics.median(r[i] for r in rows) / args.calls * 1000
                             for i in range(3))
        medians[name] = (wall, cpu, server)
        print(f"{name:<38} {wall:>8.3f} {cpu:>14.3f} {server:>14.3f}")
    (base_wall, base_cpu, base_server), (wall, cpu, server) = medians.values()
    print(f"kept / baseline: wall {wall / base_wall:.2f}x, client CPU {cpu / base_cpu:.2f}x, "
          f"server CPU {server / base_server:.2f}x, client + server CPU "
          f"{(cpu + server) / (base_cpu + base_server):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
