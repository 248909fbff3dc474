"""The Supabase/Postgres database, reached through psycopg 3.

Use Supabase's direct connection or its session pooler: corrections need real transactions
and the reconciliation lock is an advisory lock. The DSN carries a password, so it is held in an
`EnvVar` and never logged; `describe()` is what may be shown.
"""


import datetime as dt
import json
import os
import re
import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from pydantic import Field

from recon_assets.resources.guard import RunConfigGuard
from recon_assets.resources.loopback import is_loopback_host


def redact_dsn(dsn: str) -> str:
    """host:port/dbname of a DSN, without user or password, for logs and metadata."""
    try:
        parts = urlsplit(dsn)
        if parts.scheme.startswith("postgres"):
            return f"{parts.hostname}:{parts.port or 5432}{parts.path}"
    except ValueError:
        pass
    return "<postgres>"


_SQL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


class DatabaseUnavailable(ConnectionError):
    """The database could not be reached; the message names host:port/db and the reason, never
    the URL, its user or its password."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"cannot connect to the database at {where}: {reason}")
        self.where, self.reason = where, reason


def connection_failure(dsn: str, exc: BaseException | None = None) -> DatabaseUnavailable:
    """The one way a failed connection is reported, in every entry point (`recon migrate`,
    `recon health`, the Dagster resources): `cannot connect to the database at host:port/db:
    <reason>`. psycopg quotes the connection string in some messages (a malformed URL), so the
    reason is rebuilt from its words with every part of the URL taken out."""
    try:
        parts = urlsplit(dsn)
        scheme = parts.scheme
        secrets = [dsn, parts.password, parts.netloc, parts.username]
    except ValueError:
        scheme, secrets = "", [dsn]
    if scheme not in _POSTGRES_SCHEMES:
        reason = (f"not a postgresql:// URL (its scheme is {scheme!r})" if scheme and
                  re.fullmatch(r"[a-z][a-z0-9+.-]{0,20}", scheme)
                  else "not a postgresql:// URL (no scheme)")
    else:
        text = str(exc or "").strip()
        for secret in sorted((x for x in secrets if x), key=len, reverse=True):
            text = text.replace(secret, "***")
        first = text.splitlines()[0] if text else (type(exc).__name__ if exc else "unknown")
        # "connection failed: connection to server at "h", port 1 failed: Connection refused"
        reason = first.rsplit("failed: ", 1)[-1] if "failed: " in first else first
        reason = re.sub(r"^(FATAL|ERROR):\s*", "", reason.strip())
        reason = re.sub(r"\s+", " ", reason).strip().rstrip(".")
        if reason[:1].isupper() and not reason[1:2].isupper():
            reason = reason[0].lower() + reason[1:]
    return DatabaseUnavailable(redact_dsn(dsn), reason)


# SQLSTATEs of a connection the server ended: admin_shutdown, crash_shutdown, cannot_connect_now
# (57P01-03) and the connection_exception class (08).
_LOST_SQLSTATES = ("57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` says the connection broke under a statement (terminated by the server, the
    server gone, the answer lost), so whether the statement committed is unknown. Not a statement
    the server refused or cancelled (a timeout), nor a connection that could not be opened
    (`DatabaseUnavailable`: nothing was sent)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _LOST_SQLSTATES


class InsecureDatabaseUrl(ValueError):
    """A database URL to a host off this machine that does not require TLS."""


_TLS_SSLMODES = ("require", "verify-ca", "verify-full")


def require_tls_off_loopback(dsn: str) -> None:
    """Refuse (`InsecureDatabaseUrl`) a DSN whose host is not loopback (nor a Unix socket) when
    its sslmode (else PGSSLMODE) is weaker than `require`: the password and every trading row
    would cross the network in clear text. The message names host:port/db, never the password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return  # not parseable: psycopg.connect reports it, without the DSN
    hosts = [h for h in str(info.get("hostaddr") or info.get("host") or "").split(",") if h]
    sslmode = str(info.get("sslmode") or os.environ.get("PGSSLMODE") or "prefer").lower()
    if all(is_loopback_host(h) for h in hosts) or sslmode in _TLS_SSLMODES:
        return
    raise InsecureDatabaseUrl(
        f"the database at {redact_dsn(dsn)} is not on this machine and its URL does not require "
        f"TLS (sslmode={sslmode}): add sslmode=require (or verify-full) to RECON_DATABASE_URL")


def open_connection(dsn: str, **kwargs: Any) -> psycopg.Connection:
    """psycopg.connect, with any failure to connect reported by `connection_failure`; a DSN to
    another host without TLS is refused first (`require_tls_off_loopback`)."""
    require_tls_off_loopback(dsn)
    try:
        return psycopg.connect(dsn, **kwargs)
    except (psycopg.OperationalError, psycopg.ProgrammingError, psycopg.InterfaceError,
            ValueError) as exc:
        raise connection_failure(dsn, exc) from None


class _IdleConnections:
    """Connections a PostgresStore gave back, kept for its next call in this process.

    A cycle makes some 70 store calls; a new connection for each was the largest item of the
    project's own CPU in a cycle (16 % of its samples) and a PostgreSQL backend forked per call
    (issue 16). A few are kept, newest first, for at most MAX_IDLE_S; each is checked with an
    empty query before reuse (a connection the server ended is replaced, not handed out), and a
    forked child starts with none of its parent's. Not psycopg_pool: its background connection
    retries would turn "database down" into a wait for a pool timeout instead of the immediate
    `DatabaseUnavailable` the callers report.
    """

    MAX = 8
    MAX_IDLE_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._idle: list[tuple[tuple, float, psycopg.Connection]] = []  # oldest first

    def _mine(self) -> list:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use or close
            self._pid, self._idle = os.getpid(), []
        return self._idle

    def take(self, key: tuple) -> psycopg.Connection | None:
        while True:
            with self._lock:
                idle = self._mine()
                found = next((i for i in range(len(idle) - 1, -1, -1) if idle[i][0] == key), None)
                if found is None:
                    return None
                _, since, conn = idle.pop(found)
            if time.monotonic() - since <= self.MAX_IDLE_S and _alive(conn):
                return conn
            _close_quietly(conn)

    def give(self, key: tuple, conn: psycopg.Connection) -> None:
        if conn.closed or conn.broken or (
                conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE):
            _close_quietly(conn)
            return
        with self._lock:
            idle = self._mine()
            idle.append((key, time.monotonic(), conn))
            evicted, idle[:] = idle[:-self.MAX], idle[-self.MAX:]
        for _, _, old in evicted:
            _close_quietly(old)

    def __len__(self) -> int:
        with self._lock:
            return len(self._mine())


def _alive(conn: psycopg.Connection) -> bool:
    try:
        conn.autocommit = True  # the empty query opens no transaction
        conn.execute("")
        return True
    except psycopg.Error:
        return False


def _close_quietly(conn: psycopg.Connection) -> None:
    try:
        conn.close()
    except psycopg.Error:
        pass


_IDLE = _IdleConnections()


def idle_connections() -> int:
    """How many trading-database connections this process keeps for reuse."""
    return len(_IDLE)


class TradingStore(RunConfigGuard, dg.ConfigurableResource):
    """What the code location uses of the trading database, whichever backend reaches it:
    `PostgresStore` (psycopg; Supabase's direct connection or session pooler) or `SupabaseStore`
    (supabase-py through the Data API, in supabase_store.py). Every read and write the stores of
    resources/ make is one SQL function called through `call`, so both answer the same; the
    code location picks one from its configuration (`definitions.trading_database`)."""

    def describe(self) -> str:
        """Where the store points, without any secret (for logs and metadata)."""
        raise NotImplementedError

    def snapshot_account(self, account: str) -> dict:
        """The JSON of `recon_snapshot_account(account)`; raises rather than return a partial one."""
        raise NotImplementedError

    def call(self, function: str, params: dict[str, Any] | None = None) -> Any:
        """Call the SQL function `public.<function>` with named arguments, shaped as PostgREST
        shapes an rpc() result: a list for a set-returning function, else the single value."""
        raise NotImplementedError


def as_datetime(value: Any) -> dt.datetime | None:
    """A timestamp as `call()` returns it (JSON: PostgreSQL's ISO text, on both backends) back
    as an aware datetime; None and datetimes pass through."""
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(value)


def _sql_argument(value: Any) -> str | None:
    """A parameter as an untyped SQL literal, so Postgres casts it to the argument's declared type
    (as PostgREST does from JSON): numbers, text, booleans, timestamps; dicts and lists as JSON
    (for json/jsonb arguments; Postgres array arguments are not supported on this backend)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


class PostgresStore(TradingStore):
    """The trading database (Supabase Postgres) over psycopg 3."""

    dsn: str = Field(description="Postgres URL; set it through EnvVar('RECON_DATABASE_URL').")
    connect_timeout_s: int = 10
    statement_timeout_ms: int = 30_000
    # How long a correction waits for a profile's reconciliation lock before it gives up and
    # records lock contention (escalated by the alert sensor).
    lock_timeout_ms: int = 10_000

    def describe(self) -> str:
        return redact_dsn(self.dsn)

    @contextmanager
    def connect(self, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A connection with dict rows, committed on success and rolled back on error (like
        psycopg's `with conn`), then kept for this process's next call (`_IdleConnections`)
        rather than closed. Errors never echo the DSN."""
        options = (f"-c statement_timeout={self.statement_timeout_ms} "
                   f"-c lock_timeout={self.lock_timeout_ms}")
        key = (self.dsn, options, self.connect_timeout_s)
        conn = _IDLE.take(key) or open_connection(
            self.dsn, row_factory=dict_row, connect_timeout=self.connect_timeout_s,
            application_name="recon-assets", options=options,
            # No server-side prepared statements: a long-lived connection would otherwise
            # prepare repeated queries, which Supabase's transaction pooler does not support.
            prepare_threshold=None)
        try:
            conn.autocommit = autocommit
            yield conn
        except BaseException:
            try:
                conn.rollback()
            except psycopg.Error:
                pass  # broken: `give` closes it
            _IDLE.give(key, conn)
            raise
        try:
            conn.commit()
        except BaseException:
            _close_quietly(conn)
            raise
        _IDLE.give(key, conn)

    def snapshot_account(self, account: str) -> dict:
        """The account's profiles, orders, positions and open trade slices, read in one statement
        (one consistent snapshot): the JSON of `recon_snapshot_account`."""
        with self.connect() as conn:
            row = conn.execute("SELECT recon_snapshot_account(%s) AS snapshot", (account,)).fetchone()
        return row["snapshot"]

    def call(self, function: str, params: dict[str, Any] | None = None) -> Any:
        """Call `public.<function>` by named arguments in its own transaction, the way supabase-py's
        `rpc()` reaches it through PostgREST: `SELECT * FROM function(name => value, ...)`. The
        result is JSON-shaped like PostgREST's: a set-returning function gives a list (of row
        objects, or of values), any other function its one value (None for void)."""
        params = params or {}
        for name in (function, *params):
            if not _SQL_IDENTIFIER.fullmatch(name):
                raise ValueError(f"not a plain SQL identifier: {name!r}")
        args = sql.SQL(", ").join(
            sql.SQL("{} => {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in params)
        query = sql.SQL(
            "SELECT json_agg(r) AS result, (SELECT bool_or(p.proretset) FROM pg_proc p"
            " WHERE p.proname = {name} AND p.pronamespace = 'public'::regnamespace) AS retset"
            " FROM public.{fn}({args}) r").format(
                name=sql.Literal(function), fn=sql.Identifier(function), args=args)
        with self.connect() as conn:
            row = conn.execute(query, {k: _sql_argument(v) for k, v in params.items()}).fetchone()
        if row["retset"]:
            return row["result"] or []
        return row["result"][0] if row["result"] else None
