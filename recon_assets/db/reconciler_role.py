"""The reconciler's database role: the one home of the privileges the code location needs on the
trading database, and nothing more (`recon grant-reconciler ROLE`, docs/deployment.md "The
reconciler's database role").

Every read and write of the reconciler is a call of a `public.recon_*` function (`PostgresStore.
call`, `snapshot_account`). Those functions are SECURITY DEFINER with an empty search_path: they
run as their owner (the role that migrates), so the reconciler's role needs EXECUTE on them and
no privilege on any table of schema `recon`, nor any write privilege on a trading table.
The one exception is `recon_snapshot_account`, which reads the trading tables as its caller
(one statement, one MVCC snapshot): SELECT on the four tables it reads and a row-level security
policy letting the role see their rows (`recon_reads_<role>`, FOR SELECT; the tables have
row-level security since migration 0023), USAGE on schema `recon` and EXECUTE on
`recon.open_order_statuses()`, the one `recon.*` function it calls.

The grants are applied by the owner (a role that owns these objects or may grant on them), are
idempotent, and must be applied again after a `recon migrate` that changed a function's
signature (a function that is dropped and created again starts without them); `recon migrate
--grant-reconciler ROLE` does both in one command.
"""

from __future__ import annotations

from recon_assets.resources.database import open_connection

# The public.recon_* functions the code location calls (resources/, defs/, core/corrections.py,
# metrics/health.py); recon_assets_tests/test_least_privilege.py checks the list against the
# code's calls and runs a whole cycle with corrections under a role given only these.
FUNCTIONS = (
    "recon_account_gates",
    "recon_actionable_mismatches",
    "recon_alerts_to_deliver",
    "recon_asset_value",
    "recon_auto_resume",
    "recon_backfill_decisions",
    "recon_backfill_matching_state",
    "recon_begin_reconciling",
    "recon_cycle_has_status",
    "recon_cycle_mismatches",
    "recon_cycle_not_fully_checked",
    "recon_cycle_outcomes",
    "recon_database_created_at",
    "recon_database_now",
    "recon_end_reconciling",
    "recon_escalation_history",
    "recon_exchange_accounts",
    "recon_exit_backfill",
    "recon_fill_cursors",
    "recon_gate_events",
    "recon_health_state",
    "recon_income_cursor",
    "recon_known_client_ids",
    "recon_known_order_ids",
    "recon_latest_succeeded_cycle",
    "recon_note_exchange_weight",
    "recon_parity_decisions",
    "recon_parity_history",
    "recon_parity_state",
    "recon_pause_profile",
    "recon_policy_replay_history",
    "recon_profile",
    "recon_profile_ids",
    "recon_profiles_with_backfill_decision",
    "recon_profiles_with_mismatches",
    "recon_profiles_with_parity_decision",
    "recon_reconcile_cancel",
    "recon_reconcile_entry_fill",
    "recon_reconcile_exit_fill",
    "recon_reconciling_sessions",
    "recon_record_alert",
    "recon_record_backfill_decisions",
    "recon_record_cycle",
    "recon_record_delivery_attempt",
    "recon_record_failed_cycle",
    "recon_record_lock_contention",
    "recon_record_operator_action",
    "recon_record_parity_checks",
    "recon_record_policy_replay",
    "recon_record_refused_correction",
    "recon_record_resume_outlook",
    "recon_record_watchdog",
    "recon_refusal_streak",
    "recon_resolve_quarantine",
    "recon_resume_outlook",
    "recon_resume_profile",
    "recon_review_backfill",
    "recon_save_and_read_fill_window",
    "recon_share_clock_offset",
    "recon_share_markets",
    "recon_shared_clock_offset",
    "recon_shared_markets",
    "recon_snapshot_account",
    "recon_store_asset_value",
    "recon_synthetic_exit",
    "recon_take_exchange_weight",
    "recon_take_order_probes",
    "recon_unresolved_orders",
    "recon_watchdog_verdicts",
)
# The trading tables recon_snapshot_account reads as its caller (SELECT only).
SNAPSHOT_TABLES = ("profiles", "orders", "positions", "trade_history")
# The recon.* function recon_snapshot_account calls as its caller.
SNAPSHOT_HELPERS = ("recon.open_order_statuses()",)


def grant_script(role: str) -> str:
    """The whole grant for `role` as one SQL statement (a DO block; `recon grant-reconciler
    ROLE --print` prints it for psql). Run by the owner in the trading database; idempotent.
    Refuses a role that does not exist and a function of FUNCTIONS that does not (an out of date
    list fails loudly, never grants less in silence)."""
    literal = "'" + role.replace("'", "''") + "'"
    functions = ", ".join(f"'{f}'" for f in FUNCTIONS)
    tables = ", ".join(f"public.{t}" for t in SNAPSHOT_TABLES)
    # The tables have row-level security (migration 0023): a policy lets the role see every
    # row of the four it reads (a role of its own; a policy per role, so granting two roles
    # keeps both).
    policies = "".join(
        f"    EXECUTE pg_catalog.format('DROP POLICY IF EXISTS %I ON public.{t}', "
        f"'recon_reads_' || r);\n"
        f"    EXECUTE pg_catalog.format('CREATE POLICY %I ON public.{t} FOR SELECT TO %I "
        f"USING (true)', 'recon_reads_' || r, r);\n"
        for t in SNAPSHOT_TABLES)
    helpers = "".join(
        f"    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION {h} TO %I', r);\n"
        for h in SNAPSHOT_HELPERS)
    return f"""DO $reconciler$
DECLARE
    r text := {literal};
    f text;
    fn text;
    granted boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
        RAISE EXCEPTION 'recon: no role named %; create it first (CREATE ROLE ... LOGIN)', r;
    END IF;
    EXECUTE pg_catalog.format('GRANT CONNECT ON DATABASE %I TO %I',
                              pg_catalog.current_database(), r);
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA public, recon TO %I', r);
    EXECUTE pg_catalog.format('GRANT SELECT ON TABLE {tables} TO %I', r);
{policies}{helpers}    FOREACH f IN ARRAY ARRAY[{functions}] LOOP
        granted := false;
        FOR fn IN SELECT p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p
                   WHERE p.pronamespace = 'public'::pg_catalog.regnamespace AND p.proname = f
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', fn, r);
            granted := true;
        END LOOP;
        IF NOT granted THEN
            RAISE EXCEPTION 'recon: no function public.%; migrate first (recon migrate)', f;
        END IF;
    END LOOP;
END
$reconciler$;
"""


def grant_reconciler(dsn: str, role: str) -> None:
    """Apply `grant_script(role)` to the database at `dsn` (as its owner), in one transaction."""
    with open_connection(dsn, autocommit=False) as conn:
        with conn.transaction():
            conn.execute(grant_script(role))
