"""Apply the project's SQL to a database: versioned migrations once each, then the repeatable SQL.

Two kinds of file, as in Flyway's versioned (`V__`) and repeatable (`R__`) scripts:

- `migrations/NNNN_name.sql`: schema changes (tables, types, indexes, table grants), applied once
  each, in version order, and recorded in `recon.schema_migrations` (kind `versioned`). A
  migration whose file changed after it was applied is an error: history is not rewritten
  silently, add a new migration instead.
- `functions/*.sql`: every SQL function and trigger function (and the grants on them), one file
  per function or small family, written with `CREATE OR REPLACE` so applying a file again is
  safe. They are applied in the order `functions/ORDER` states, after the migrations, and
  recorded with their checksum (kind `repeatable`, version `R:<file name>`). When any of them
  changed, or a migration was applied in this run (it may have replaced what they were created
  against), all of them are applied again in that order, so a dependent (a LANGUAGE sql
  wrapper, a grant) never points at an older definition. So the current body of a money
  function is always in one file, and changing it is editing that file.

Everything pending runs in one transaction together with its bookkeeping rows (DDL is
transactional in Postgres), so a failure leaves the database exactly as it was. A
transaction-scoped advisory lock serialises concurrent migrators (two deploys starting at once).

Upgrading a database migrated before the split: migrations 0002, 0003, 0005 and 0006 used to
create functions as well. Those files now hold only their schema part; a database that recorded
their earlier checksums (`LEGACY_CHECKSUMS`) gets the current ones recorded instead, and the
functions are re-created from `functions/` in the same transaction (a test migrates with the old
files, upgrades, and compares the schema with a fresh install).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import psycopg

from recon_assets.resources.database import open_connection

# Arbitrary constant shared by every migrator of this project.
_MIGRATION_LOCK_ID = 0x7265636F6E  # "recon"
REPEATABLE_PREFIX = "R:"

# The checksums migrations had before their functions moved to functions/ (same schema objects).
LEGACY_CHECKSUMS = {
    "0002": {"2a324a0894bcf2838cc201439db9073ff1324e52fcb5c60cf7233556c27136da"},
    "0003": {"bf070a7340a0559de44d20362522be4006a871c86dadf7963d447a4d7887811f"},
    "0005": {"5383a7a85b4919b2ea0464b3b65b0c2c5c0eea9074166ed288a753c415543476"},
    "0006": {"ae1fb2b17799cf52690715469762a2d6ca12416dc1f6fc48dbea22a681597aad"},
}


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


@dataclass(frozen=True)
class Repeatable:
    file: str
    sql: str

    @property
    def version(self) -> str:
        return REPEATABLE_PREFIX + self.file

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


def available_repeatables() -> list[Repeatable]:
    """The repeatable SQL files in the order `functions/ORDER` gives; every .sql file of the
    folder must be listed there exactly once."""
    folder = resources.files("recon_assets.db") / "functions"
    order = [line.strip() for line in (folder / "ORDER").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    on_disk = {entry.name for entry in folder.iterdir() if entry.name.endswith(".sql")}
    twice = sorted({name for name in order if order.count(name) > 1})
    unlisted = sorted(on_disk - set(order))
    missing = sorted(set(order) - on_disk)
    if twice or unlisted or missing:
        raise MigrationError(
            "db/functions/ORDER must list every .sql file of db/functions once: "
            + "; ".join(part for part in (
                twice and f"listed twice: {', '.join(twice)}",
                unlisted and f"not listed: {', '.join(unlisted)}",
                missing and f"listed but missing: {', '.join(missing)}") if part))
    return [Repeatable(name, (folder / name).read_text()) for name in order]


def _ensure_bookkeeping(conn: psycopg.Connection) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS recon")
    conn.execute(
        """CREATE TABLE IF NOT EXISTS recon.schema_migrations (
               version text PRIMARY KEY,
               name text NOT NULL,
               checksum text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    # Added with the repeatable files; ALTER keeps databases migrated before that working.
    conn.execute("ALTER TABLE recon.schema_migrations ADD COLUMN IF NOT EXISTS "
                 "kind text NOT NULL DEFAULT 'versioned'")


def _apply(conn: psycopg.Connection, what: str, sql: str) -> None:
    try:
        conn.execute(sql)
    except psycopg.Error as exc:
        raise MigrationError(f"{what} failed: {exc}") from exc


def migrate(dsn: str) -> list[str]:
    """Apply every pending migration, then the repeatable SQL if anything changed, to the
    database at `dsn`; return what was applied (migration versions, then `R:<file>`)."""
    applied_now: list[str] = []
    with open_connection(dsn, autocommit=False) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_ID,))
            _ensure_bookkeeping(conn)
            done = dict(
                conn.execute("SELECT version, checksum FROM recon.schema_migrations").fetchall()
            )
            for migration in available_migrations():
                recorded = done.get(migration.version)
                if recorded == migration.checksum:
                    continue
                if recorded is not None:
                    if recorded not in LEGACY_CHECKSUMS.get(migration.version, ()):
                        raise MigrationError(
                            f"migration {migration.version}_{migration.name} was changed after "
                            "it was applied; add a new migration instead of editing it")
                    # Its functions moved to functions/ (re-created below); record the split file.
                    conn.execute("UPDATE recon.schema_migrations SET checksum = %s "
                                 "WHERE version = %s", (migration.checksum, migration.version))
                    continue
                _apply(conn, f"migration {migration.version}_{migration.name}", migration.sql)
                conn.execute(
                    "INSERT INTO recon.schema_migrations (version, name, checksum, kind) "
                    "VALUES (%s, %s, %s, 'versioned')",
                    (migration.version, migration.name, migration.checksum))
                applied_now.append(migration.version)

            repeatables = available_repeatables()
            changed = any(done.get(r.version) != r.checksum for r in repeatables)
            if changed or applied_now:
                for repeatable in repeatables:
                    _apply(conn, f"db/functions/{repeatable.file}", repeatable.sql)
                    conn.execute(
                        """INSERT INTO recon.schema_migrations (version, name, checksum, kind)
                           VALUES (%s, %s, %s, 'repeatable')
                           ON CONFLICT (version) DO UPDATE
                           SET checksum = EXCLUDED.checksum, applied_at = now()""",
                        (repeatable.version, repeatable.file.removesuffix(".sql"),
                         repeatable.checksum))
                    applied_now.append(repeatable.version)
    return applied_now
