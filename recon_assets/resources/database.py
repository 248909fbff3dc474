"""The Supabase/Postgres database, reached through psycopg 3.

Use Supabase's direct connection or its session pooler: corrections need real transactions
and the reconciliation lock is an advisory lock. The DSN carries a password, so it is held in an
`EnvVar` and never logged; `describe()` is what may be shown.
"""


from contextlib import contextmanager
from collections.abc import Iterator
from urllib.parse import urlsplit

import dagster as dg
import psycopg
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


class PostgresStore(dg.ConfigurableResource):
    """The trading database (Supabase Postgres) over psycopg 3."""

    dsn: str = Field(description="Postgres URL; set it through EnvVar('RECON_DATABASE_URL').")
    connect_timeout_s: int = 10
    statement_timeout_ms: int = 30_000

    def describe(self) -> str:
        return redact_dsn(self.dsn)

    @contextmanager
    def connect(self, autocommit: bool = False) -> Iterator[psycopg.Connection]:
        """A connection with dict rows; errors never echo the DSN."""
        try:
            conn = psycopg.connect(
                self.dsn, autocommit=autocommit, row_factory=dict_row,
                connect_timeout=self.connect_timeout_s, application_name="recon-assets",
                options=f"-c statement_timeout={self.statement_timeout_ms}")
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
