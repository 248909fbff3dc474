"""Apply the SQL migrations in `migrations/` in order, once each, and record them.

All pending migrations run in one transaction together with their bookkeeping rows (DDL is
transactional in Postgres), so a failure leaves the database exactly as it was. A transaction-scoped advisory lock serialises
concurrent migrators (two deploys starting at once). A migration whose file changed after it
was applied is an error: history is not rewritten silently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import psycopg

# Arbitrary constant shared by every migrator of this project.
_MIGRATION_LOCK_ID = 0x7265636F6E  # "recon"


class MigrationError(RuntimeError):
    """A migration could not be applied, or history differs from the files."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, ordered by their numeric prefix."""
    folder = resources.files("recon_assets.db") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version, rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: int(m.version))


def _ensure_bookkeeping(conn: psycopg.Connection) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS recon")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS recon.schema_migrations (
               version text PRIMARY KEY,
               name text NOT NULL,
               checksum text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )


def migrate(dsn: str) -> list[str]:
    """Apply every pending migration to the database at `dsn`; return the versions applied."""
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=False) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_ID,))
            _ensure_bookkeeping(conn)
            done = dict(
                conn.execute("SELECT version, checksum FROM recon.schema_migrations").fetchall()
            )
            for migration in available_migrations():
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version}_{migration.name} was changed after "
                            "it was applied; add a new migration instead of editing it"
                        )
                    continue
                try:
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO recon.schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} failed: {exc}"
                    ) from exc
                applied_now.append(migration.version)
    return applied_now
