"""The `recon` command: `recon migrate`, and the servers and demo that later modules add.

Each subcommand imports its module only when called, so `recon migrate` stays fast.
"""

import argparse
import os
import sys

from recon_assets.resources.database import redact_dsn


def _migrate(args: argparse.Namespace) -> int:
    from recon_assets.db.migrate import REPEATABLE_PREFIX, MigrationError, migrate
    from recon_assets.resources.database import DatabaseUnavailable

    dsn = args.dsn or os.environ.get("RECON_DATABASE_URL")
    if not dsn:
        print("recon migrate: give --dsn or set RECON_DATABASE_URL", file=sys.stderr)
        return 2
    try:
        applied = migrate(dsn)
    except (MigrationError, DatabaseUnavailable) as exc:
        # One line, no traceback: the message names host:port/db, never the URL's secrets.
        print(f"recon migrate: {exc}", file=sys.stderr)
        return 1
    target = redact_dsn(dsn)
    if args.grant_reconciler and _grant(dsn, args.grant_reconciler, "recon migrate"):
        return 1
    versions = [v for v in applied if not v.startswith(REPEATABLE_PREFIX)]
    repeatables = len(applied) - len(versions)
    if versions:
        print(f"applied migrations {', '.join(versions)} to {target}")
    if repeatables:
        print(f"applied {repeatables} repeatable SQL file(s) of db/functions to {target}")
    if not applied:
        print(f"{target} is up to date; nothing to apply")
    if args.grant_reconciler:
        print(f"granted the reconciler's privileges on {target} to {args.grant_reconciler}")
    return 0


def _grant(dsn: str, role: str, command: str) -> bool:
    """Apply the reconciler's grants to `role`; True (and one line on stderr) when it failed."""
    import psycopg

    from recon_assets.db.reconciler_role import grant_reconciler
    from recon_assets.resources.database import DatabaseUnavailable

    try:
        grant_reconciler(dsn, role)
    except DatabaseUnavailable as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return True
    except psycopg.Error as exc:
        print(f"{command}: granting to {role} failed: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return True
    return False


def _grant_reconciler(args: argparse.Namespace) -> int:
    from recon_assets.db.reconciler_role import grant_script

    if args.print:
        print(grant_script(args.role), end="")
        return 0
    dsn = args.dsn or os.environ.get("RECON_DATABASE_URL")
    if not dsn:
        print("recon grant-reconciler: give --dsn or set RECON_DATABASE_URL (the owner's URL)",
              file=sys.stderr)
        return 2
    if _grant(dsn, args.role, "recon grant-reconciler"):
        return 1
    print(f"granted the reconciler's privileges on {redact_dsn(dsn)} to {args.role}")
    return 0


# Subcommands that own their arguments: `recon NAME ...` runs `main(argv)` of the module.
DELEGATED = {
    "simulator": ("recon_assets.simulator.server", "the loopback Binance USD-M exchange simulator"),
    "health": ("recon_assets.metrics.server", "serve /internal/health and /metrics"),
    "demo": ("recon_assets.demo", "the full loop against the simulator, with the Dagster UI"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recon", description="recon-assets: the reconciliation control plane's command "
                                  "(`recon <command> --help` for each).")
    sub = parser.add_subparsers(dest="command", required=True)

    migrate_cmd = sub.add_parser(
        "migrate", help="apply pending database migrations and changed SQL functions",
        description="Apply the pending versioned migrations and the changed repeatable SQL "
                    "(recon_assets/db) to the trading database, in one transaction; a no-op the "
                    "second time. A connection failure prints one line and exits 1.")
    migrate_cmd.add_argument("--dsn", help="Postgres URL (default: $RECON_DATABASE_URL)")
    migrate_cmd.add_argument("--grant-reconciler", metavar="ROLE",
                             help="then grant ROLE the reconciler's privileges (as "
                                  "`recon grant-reconciler ROLE`)")
    migrate_cmd.set_defaults(func=_migrate)

    grant_cmd = sub.add_parser(
        "grant-reconciler", help="grant a role exactly the privileges the reconciler uses",
        description="Grant an existing LOGIN role what the code location needs on the trading "
                    "database and nothing more (recon_assets/db/reconciler_role.py; "
                    "docs/deployment.md, \"The reconciler's database role\"). Run as the owner "
                    "(the role that migrates), after `recon migrate`; idempotent.")
    grant_cmd.add_argument("role", help="the reconciler's role (it must exist)")
    grant_cmd.add_argument("--dsn", help="the owner's Postgres URL (default: $RECON_DATABASE_URL)")
    grant_cmd.add_argument("--print", action="store_true",
                           help="print the SQL (one DO block, for psql) instead of running it")
    grant_cmd.set_defaults(func=_grant_reconciler)
    for name, (_module, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        module = importlib.import_module(DELEGATED[argv[0]][0])
        return module.main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
