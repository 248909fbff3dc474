"""A test PostgreSQL set up as Supabase sets up its projects, and the health server on a free port.

One home for both, used by conftest's session server, by the tests that need a server of their
own (the database-fault tests stop theirs by its pid) and by the health tests.
"""

import threading
from contextlib import contextmanager

import psycopg

from recon_assets.db.migrate import migrate
from recon_assets.local_postgres import LocalPostgres
from recon_assets.metrics.server import make_server

SUPABASE_ROLES = ("anon", "authenticated", "service_role")
# What a Supabase project grants its API roles in schema public by default (so tables the
# trading app creates there are reachable through the Data API, and functions callable, unless
# revoked): the migrated test databases start from the same, and grants.sql must close the
# recon functions again.
SUPABASE_DEFAULT_PRIVILEGES = """
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO anon, authenticated, service_role;
"""


def create_api_roles(server: LocalPostgres) -> None:
    """Supabase's API roles, so the migrations grant to them as on Supabase and the PostgREST
    stand-in can run a call as the key's role (NOLOGIN: nobody connects as them)."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for role in SUPABASE_ROLES:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                # Supabase's service_role bypasses row-level security (the service key is
                # the backend's); anon and authenticated are subject to it.
                extra = " BYPASSRLS" if role == "service_role" else ""
                conn.execute(f"CREATE ROLE {role} NOLOGIN{extra}")


def create_migrated_database(server: LocalPostgres, name: str) -> str:
    """A new database `name` with Supabase's default privileges and every migration; its DSN."""
    dsn = server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SUPABASE_DEFAULT_PRIVILEGES)
    migrate(dsn)
    return dsn


@contextmanager
def serving_health(source, **options):
    """The health server in this process, on a free port of 127.0.0.1; always shut down."""
    server = make_server(source, port=0, **options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
