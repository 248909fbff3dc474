"""The Supabase/Postgres database, reached through psycopg 3.

Use Supabase's direct connection or its session pooler: corrections need real transactions
and the reconciliation lock is an advisory lock. The DSN carries a password, so it is held in an
`EnvVar` and never logged; `describe()` is what may be shown.
"""


import json
import re
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import dagster as dg
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import Field


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


@runtime_checkable
class TradingStore(Protocol):
    """What callers use of the trading database, whichever backend reaches it: `PostgresStore`
    (psycopg, primary) or `SupabaseStore` (supabase-py through PostgREST, in supabase_store.py)."""

    def describe(self) -> str:
        """Where the store points, without any secret (for logs and metadata)."""

    def snapshot_account(self, account: str) -> dict:
        """The JSON of `recon_snapshot_account(account)`; raises rather than return a partial one."""

    def call(self, function: str, params: dict[str, Any] | None = None) -> Any:
        """Call the SQL function `public.<function>` with named arguments, shaped as PostgREST
        shapes an rpc() result: a list for a set-returning function, else the single value."""


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


class PostgresStore(dg.ConfigurableResource):
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
        """A connection with dict rows; errors never echo the DSN."""
        try:
            conn = psycopg.connect(
                self.dsn, autocommit=autocommit, row_factory=dict_row,
                connect_timeout=self.connect_timeout_s, application_name="recon-assets",
                options=f"-c statement_timeout={self.statement_timeout_ms} "
                        f"-c lock_timeout={self.lock_timeout_ms}")
        except psycopg.OperationalError as exc:
            # psycopg's message names host and user but not the password; keep only its reason.
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ConnectionError(f"cannot connect to the database at {self.describe()}: {reason}") from None
        with conn:
            yield conn

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
