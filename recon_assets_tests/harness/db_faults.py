"""Database faults for the reliability tests (issue 18): a TEST-ONLY fault injector.

Every read and write of the reconciler goes through `PostgresStore.call(function, params)` (and
`PostgresStore.snapshot_account`, counted here as the function `recon_snapshot_account`), each
on a connection from `PostgresStore.connect`. `inject_fault` patches those three methods of the
class, in this process only, for the duration of a `with` block, and at the `nth` call of
`function` (any function when None; then the next `times - 1` matching calls too) makes the
database fail in one of these ways:

- LOST_BEFORE: the connection the call got (alive: it passed the store's reuse check) is
  terminated on the server (`pg_terminate_backend`, from a superuser connection) before the
  statement is sent; the caller gets psycopg's real OperationalError. Nothing ran.
- LOST_DURING: a superuser connection holds `block_sql` (default: an EXCLUSIVE lock on
  public.capital_ledger, which a correction handler writes last, after orders, slices,
  positions and fills) in an open transaction; once pg_stat_activity shows the call's backend
  waiting on it (a poll with a timeout, no sleep as synchronisation), the backend is
  terminated mid-transaction, then the blocker rolls back. `Fault.written_at_kill` lists the
  relations the killed transaction had written (RowExclusiveLock held), the proof it was
  mid-way. PostgreSQL rolls the transaction back.
- LOST_AFTER: the call runs and commits; then its backend is terminated and the caller gets an
  OperationalError instead of the result, as when the COMMIT's answer is lost on the wire. The
  error is raised by the injector (psycopg cannot be made to lose an answer it already read):
  the point is that the database did commit and the caller does not know.
- STATEMENT_TIMEOUT: a superuser connection holds `block_sql` (default: an ACCESS EXCLUSIVE lock
  on public.orders) for the whole call, so the call waits until the store's own
  `statement_timeout_ms` (or `lock_timeout_ms`, whichever is shorter) cancels it: the real
  QueryCanceled / LockNotAvailable. Give the store a short timeout.
- HOOK: `action(fault)` runs before the call (`when="before"`) or after it returned
  (`when="after"`); e.g. stop a dedicated LocalPostgres by its pid (a restart mid-cycle).

The superuser connection is `admin_dsn`, default the store's own DSN (the tests' databases are
reached as the superuser). The yielded `Fault` records what happened: `fired` (how many calls
were hit), `errors` (the exception each hit call raised to its caller, or None), `pids`.

    with inject_fault(LOST_DURING, function="recon_reconcile_entry_fill") as fault:
        results = run_corrections(defs, instance, requests)
    assert fault.fired == 1 and fault.written_at_kill

Only PostgresStore (psycopg) is patched; the Supabase store is not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from recon_assets.resources.database import PostgresStore

LOST_BEFORE = "lost_before"
LOST_DURING = "lost_during"
LOST_AFTER = "lost_after"
STATEMENT_TIMEOUT = "statement_timeout"
HOOK = "hook"
KINDS = (LOST_BEFORE, LOST_DURING, LOST_AFTER, STATEMENT_TIMEOUT, HOOK)
SNAPSHOT = "recon_snapshot_account"  # the name snapshot_account's calls are counted under

DEFAULT_BLOCK_SQL = {
    LOST_DURING: "LOCK TABLE public.capital_ledger IN EXCLUSIVE MODE",
    STATEMENT_TIMEOUT: "LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE",
}


class FaultTimeout(AssertionError):
    """The injector waited too long for the database to reach the state it needed."""


@dataclass
class Fault:
    kind: str
    function: str | None
    nth: int = 1
    times: int = 1
    admin_dsn: str | None = None
    block_sql: str | None = None
    block_params: tuple = ()
    action: Callable[["Fault"], None] | None = None
    when: str = "before"
    wait_s: float = 30.0
    seen: int = 0          # matching calls so far
    fired: int = 0         # calls the fault was applied to
    errors: list[BaseException | None] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    written_at_kill: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # every function called while armed
    watch_error: BaseException | None = None
    _armed_for: Any = None  # the thread whose current call is being hit
    _watcher: threading.Thread | None = None

    def matches(self, function: str) -> bool:
        return self.function is None or self.function == function


def _admin(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5,
                           application_name="recon-db-faults")


def _poll(what: str, check: Callable[[], bool], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not check():
        if time.monotonic() > deadline:
            raise FaultTimeout(f"db_faults: gave up after {wait_s:g}s waiting for {what}")
        time.sleep(0.01)


def terminate_backend(admin_dsn: str, pid: int, wait_s: float = 30.0) -> None:
    """pg_terminate_backend(pid) and wait until the backend is gone."""
    with _admin(admin_dsn) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        _poll(f"backend {pid} to exit", lambda: admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0] == 0,
            wait_s)


@contextmanager
def inject_fault(kind: str, function: str | None = None, *, nth: int = 1, times: int = 1,
                 admin_dsn: str | None = None, block_sql: str | None = None,
                 block_params: tuple = (), action: Callable[[Fault], None] | None = None,
                 when: str = "before", wait_s: float = 30.0) -> Iterator[Fault]:
    """Patch PostgresStore (this process, this block) to apply `kind` to the `nth` call of
    `function` and the `times - 1` matching calls after it; yields the `Fault` record."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(KINDS)}")
    if kind == HOOK and action is None:
        raise ValueError("a HOOK fault needs an action")
    fault = Fault(kind, function, nth, times, admin_dsn,
                  block_sql or DEFAULT_BLOCK_SQL.get(kind), block_params, action, when, wait_s)
    original_call = PostgresStore.call
    original_snapshot = PostgresStore.snapshot_account
    original_connect = PostgresStore.connect
    state = threading.local()

    @contextmanager
    def connect(self, autocommit: bool = False):
        with original_connect(self, autocommit) as conn:
            if fault._armed_for == threading.get_ident() and getattr(state, "pending", False):
                state.pending = False
                pid = conn.info.backend_pid
                fault.pids.append(pid)
                if kind == LOST_BEFORE:
                    terminate_backend(fault.admin_dsn or self.dsn, pid, wait_s)
                elif kind == LOST_DURING:
                    _kill_when_blocked(fault, fault.admin_dsn or self.dsn, pid)
            yield conn

    def hit(self, function: str, run: Callable[[], Any]) -> Any:
        fault.calls.append(function)
        if not fault.matches(function):
            return run()
        fault.seen += 1
        if not (fault.nth <= fault.seen < fault.nth + fault.times):
            return run()
        fault.fired += 1
        admin_dsn = fault.admin_dsn or self.dsn
        blocker = None
        try:
            if kind == HOOK and when == "before":
                fault.action(fault)
            if kind in (STATEMENT_TIMEOUT, LOST_DURING):
                blocker = _admin(admin_dsn)
                blocker.autocommit = False
                blocker.execute(fault.block_sql, fault.block_params)
            fault._armed_for, state.pending = threading.get_ident(), True
            try:
                result = run()
            finally:
                fault._armed_for, state.pending = None, False
                if fault._watcher is not None:
                    fault._watcher.join(fault.wait_s)
                    fault._watcher = None
            if fault.watch_error is not None:
                raise FaultTimeout(f"db_faults: {fault.watch_error}")
            if kind == LOST_AFTER:
                terminate_backend(admin_dsn, fault.pids[-1] if fault.pids else -1, wait_s)
                raise psycopg.OperationalError(
                    "consuming input failed: server closed the connection unexpectedly\n"
                    "\tThis probably means the server terminated abnormally\n"
                    "\tbefore or while processing the request.")
            if kind == HOOK and when == "after":
                fault.action(fault)
        except BaseException as exc:
            fault.errors.append(exc)
            raise
        finally:
            if blocker is not None:
                try:
                    blocker.rollback()
                finally:
                    blocker.close()
        fault.errors.append(None)
        return result

    def call(self, function, params=None):
        return hit(self, function, lambda: original_call(self, function, params))

    def snapshot_account(self, account):
        return hit(self, SNAPSHOT, lambda: original_snapshot(self, account))

    PostgresStore.call = call
    PostgresStore.snapshot_account = snapshot_account
    PostgresStore.connect = connect
    try:
        yield fault
    finally:
        PostgresStore.call = original_call
        PostgresStore.snapshot_account = original_snapshot
        PostgresStore.connect = original_connect


def _kill_when_blocked(fault: Fault, admin_dsn: str, pid: int) -> None:
    """From a thread: once backend `pid` waits on a lock, note what it has written, terminate
    it. Started before the caller sends its statement (connect() yields right after)."""

    def watch() -> None:
        try:
            _watch()
        except BaseException as exc:  # noqa: BLE001 - reported by the calling thread
            fault.watch_error = exc

    def _watch() -> None:
        with _admin(admin_dsn) as admin:
            _poll(f"backend {pid} to wait on the blocker", lambda: admin.execute(
                "SELECT cardinality(pg_blocking_pids(%s)) > 0", (pid,)).fetchone()[0],
                fault.wait_s)
            fault.written_at_kill[:] = [r[0] for r in admin.execute(
                "SELECT DISTINCT c.relnamespace::regnamespace || '.' || c.relname"
                " FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE l.pid = %s AND l.granted AND l.mode = 'RowExclusiveLock'"
                "   AND c.relkind = 'r' ORDER BY 1", (pid,)).fetchall()]
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    fault._watcher = threading.Thread(target=watch, name=f"db-fault-kill-{pid}", daemon=True)
    fault._watcher.start()


def lost_pid_of(fault: Fault) -> int | None:
    """The backend pid of the last call the fault hit."""
    return fault.pids[-1] if fault.pids else None
