"""The SQL layout: schema changes are versioned migrations, every function has one repeatable file,
and a database migrated with the old layout (0001-0007 holding the functions) upgrades to exactly
what a fresh install has."""

import hashlib
import re
import subprocess
from importlib import resources
from pathlib import Path

import psycopg
import pytest

from recon_assets.db.migrate import (LEGACY_CHECKSUMS, MigrationError, available_migrations,
                                     available_repeatables, migrate)
from recon_assets.local_postgres import find_pg_bindir

pytestmark = pytest.mark.db

# The migration files as they were before the split (commit e278faa), applied by the migrator of
# that time: each file once, recorded with its checksum.
LEGACY = Path(__file__).resolve().parents[1] / "harness" / "fixtures" / "migrations_0001_0007"
FUNCTIONS = resources.files("recon_assets.db") / "functions"
_DEFINES = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE|VIEW|TRIGGER)\b", re.I)


def _migrate_like_before_the_split(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS recon")
        conn.execute("""CREATE TABLE IF NOT EXISTS recon.schema_migrations (
                            version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                            applied_at timestamptz NOT NULL DEFAULT now())""")
        for path in sorted(LEGACY.glob("*.sql")):
            sql = path.read_text()
            version, _, rest = path.name.partition("_")
            conn.execute(sql)
            conn.execute("INSERT INTO recon.schema_migrations (version, name, checksum) "
                         "VALUES (%s, %s, %s)",
                         (version, rest.removesuffix(".sql"), hashlib.sha256(sql.encode()).hexdigest()))


def _schema(dsn: str) -> str:
    """pg_dump's schema-only text of the database: tables, constraints, indexes, triggers,
    function bodies, grants."""
    out = subprocess.run([str(find_pg_bindir() / "pg_dump"), "--schema-only", "--no-owner", dsn],
                         capture_output=True, text=True, check=True).stdout
    # Not compared: the version lines of the header, and the random key of the \restrict /
    # \unrestrict guard lines newer pg_dump releases write around the dump.
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("-- Dumped", "\\restrict", "\\unrestrict")))


def _functions(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p "
            "WHERE p.pronamespace IN ('public'::regnamespace, 'recon'::regnamespace)").fetchall()
    return dict(rows)


def test_the_legacy_fixture_is_what_the_old_layout_recorded():
    for path in LEGACY.glob("*.sql"):
        version = path.name.partition("_")[0]
        checksum = hashlib.sha256(path.read_text().encode()).hexdigest()
        current = next(m for m in available_migrations() if m.version == version)
        assert checksum == current.checksum or checksum in LEGACY_CHECKSUMS[version], path.name


def test_a_database_of_the_old_layout_upgrades_to_a_fresh_install(empty_pg_dsn, pg_server):
    _migrate_like_before_the_split(empty_pg_dsn)
    applied = migrate(empty_pg_dsn)
    # No migration of the old layout runs again (the split files are recorded under their new
    # checksums); only those added since do.
    legacy = {path.name.partition("_")[0] for path in LEGACY.glob("*.sql")}
    assert [v for v in applied if not v.startswith("R:")] == [
        m.version for m in available_migrations() if m.version not in legacy]
    assert [v.removeprefix("R:") for v in applied if v.startswith("R:")] == [
        r.file for r in available_repeatables()]
    fresh = pg_server.create_database("fresh_layout")
    try:
        migrate(fresh)
        assert _functions(empty_pg_dsn) == _functions(fresh)
        assert _schema(empty_pg_dsn) == _schema(fresh)
        with psycopg.connect(empty_pg_dsn) as old, psycopg.connect(fresh) as new:
            query = "SELECT version, checksum, kind FROM recon.schema_migrations ORDER BY version"
            assert old.execute(query).fetchall() == new.execute(query).fetchall()
    finally:
        pg_server.drop_database("fresh_layout")
    assert migrate(empty_pg_dsn) == []


def test_an_edited_function_file_is_applied_again(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # As if the database held an older body of the file and recorded its checksum.
        conn.execute("CREATE OR REPLACE FUNCTION recon.open_order_statuses() RETURNS text[] "
                     "LANGUAGE sql IMMUTABLE AS $$ SELECT ARRAY['open']::text[] $$")
        conn.execute("UPDATE recon.schema_migrations SET checksum = 'older' "
                     "WHERE version = 'R:recon.open_order_statuses.sql'")
    applied = migrate(pg_dsn)
    assert "R:recon.open_order_statuses.sql" in applied
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT recon.open_order_statuses()").fetchone()[0] == [
            "new", "open", "partially_filled"]
        # Privileges survive re-application (grants.sql runs after every other file).
        assert conn.execute(
            "SELECT has_function_privilege('public', 'public.recon_reconcile_cancel("
            "text, text, text, text, text, numeric, text, boolean, jsonb)', 'EXECUTE')"
        ).fetchone()[0] is False
    assert migrate(pg_dsn) == []


def test_a_migration_edited_after_it_was_applied_is_still_refused(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE recon.schema_migrations SET checksum = 'something else' "
                     "WHERE version = '0005'")
    with pytest.raises(MigrationError, match="0005_lifecycle_handlers was changed"):
        migrate(pg_dsn)


def test_migrations_define_no_function_trigger_or_view():
    for migration in available_migrations():
        assert not _DEFINES.search(migration.sql), (
            f"{migration.version}_{migration.name} defines a function, trigger or view: "
            "it belongs in db/functions/")


def test_every_function_is_defined_in_exactly_one_file(pg_dsn):
    defined: dict[str, list[str]] = {}
    for repeatable in available_repeatables():
        for name in re.findall(r"CREATE\s+OR\s+REPLACE\s+FUNCTION\s+([\w.]+)\s*\(",
                               repeatable.sql, re.I):
            defined.setdefault(name, []).append(repeatable.file)
    twice = {name: files for name, files in defined.items() if len(files) > 1}
    assert not twice
    with psycopg.connect(pg_dsn) as conn:
        live = {f"{schema}.{name}" for schema, name in conn.execute(
            "SELECT n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname IN ('public', 'recon')").fetchall()}
    assert live == set(defined)
    # Each file is named after its function (or the first of its small family).
    for repeatable in available_repeatables():
        names = [n for n, files in defined.items() if repeatable.file in files]
        if names:
            assert repeatable.file.removesuffix(".sql") in names, repeatable.file


def test_order_lists_every_function_file_once():
    listed = [r.file for r in available_repeatables()]
    on_disk = sorted(entry.name for entry in FUNCTIONS.iterdir() if entry.name.endswith(".sql"))
    assert sorted(listed) == on_disk
    assert listed[-1] == "grants.sql"
