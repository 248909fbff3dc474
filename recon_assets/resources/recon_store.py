"""The store of the reconciler's own history in schema `recon`: cycles, mismatches, lock contention
and alerts. Every query the Dagster definitions make of these tables is a method here, so "what
reads or writes recon.X" is one search, and another backend implements one class.

Money is not written here: corrections go through the SQL functions of db/functions (called with
`PostgresStore.call`, under the profile's lock).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from recon_assets.core.escalation import MISMATCH_IDENTITY
from recon_assets.core.rules import APPLIED, CYCLE_FAILED, CYCLE_SUCCEEDED
from recon_assets.resources.database import PostgresStore


def _frame(conn, query: str, params: tuple = ()) -> pd.DataFrame:
    cursor = conn.execute(query, params)
    return pd.DataFrame(cursor.fetchall(), columns=[c.name for c in cursor.description])


class ReconStore:
    """Reads and writes recon.cycles, recon.mismatches, recon.lock_contention and recon.alerts."""

    def __init__(self, database: PostgresStore):
        self.database = database

    # --- cycles and their findings -----------------------------------------------------------

    def record_cycle(self, cycle_id: str, account: str, started_at: str,
                     mismatches: list[dict], evidence: dict[str, str | None]) -> int:
        """A succeeded cycle, the evidence its diff was made from (db_read_at, exchange_read_at,
        db_run_id, exchange_run_id) and its findings (`recon_record_cycle`, one transaction);
        returns how many findings were newly recorded (0 when the cycle was already recorded)."""
        return self.database.call("recon_record_cycle", {
            "p_cycle_id": cycle_id, "p_account": account, "p_started_at": started_at,
            "p_mismatches": mismatches, **{f"p_{k}": v for k, v in evidence.items()}})

    def record_failed_cycle(self, cycle_id: str, account: str, error: str) -> None:
        """A cycle that failed before its findings could be trusted (never overrides a success)."""
        self.database.call("recon_record_failed_cycle", {
            "p_cycle_id": cycle_id, "p_account": account, "p_error": error})

    def created_at(self):
        """When this database got its first migration (`recon migrate` on an empty database): a
        run that started earlier acted on another database (the demo re-seeds on every start)."""
        with self.database.connect() as conn:
            return conn.execute("SELECT min(applied_at) AS created FROM recon.schema_migrations "
                                "WHERE kind = 'versioned'").fetchone()["created"]

    def latest_succeeded_cycle(self, account: str, cycle_id: str = "") -> dict | None:
        """The account's latest succeeded cycle (or the cycle `cycle_id` if it succeeded), with
        the age of its evidence in seconds by the database clock: from the earlier of its two
        snapshot reads (from when it finished, for a cycle recorded without them)."""
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT cycle_id, exchange_account, finished_at, db_read_at, exchange_read_at,
                          extract(epoch FROM now() - LEAST(COALESCE(db_read_at, finished_at),
                                                           COALESCE(exchange_read_at, finished_at)))
                              AS age_s
                   FROM recon.cycles WHERE exchange_account = %s AND status = %s
                     AND (%s = '' OR cycle_id = %s)
                   ORDER BY finished_at DESC LIMIT 1""",
                (account, CYCLE_SUCCEEDED, cycle_id, cycle_id)).fetchone()

    def actionable_mismatches(self, cycle_id: str, profile_id: str,
                              kinds: tuple[str, ...]) -> list[dict]:
        """The cycle's mismatches of `kinds` for the profile, joined with the order as the
        database holds it now (numbers as exact text)."""
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT m.id AS mismatch_id, m.kind, o.profile_id, o.trade_id, o.intent, o.symbol,
                          o.side, o.client_order_id, o.exchange_order_id, o.status,
                          o.qty::text AS qty, o.filled_qty::text AS filled_qty,
                          o.avg_fill_price::text AS avg_fill_price, o.price::text AS price,
                          (extract(epoch FROM o.created_at) * 1000)::bigint AS created_at_ms
                   FROM recon.mismatches m
                   JOIN orders o ON o.client_order_id = m.client_order_id
                                AND o.profile_id = m.profile_id
                   WHERE m.cycle_id = %s AND m.profile_id = %s AND m.kind = ANY(%s)
                   ORDER BY m.client_order_id""",
                (cycle_id, profile_id, list(kinds))).fetchall()

    def profiles_with_mismatches(self, cycle_id: str, account: str,
                                 kinds: tuple[str, ...]) -> list[str]:
        """The profiles with at least one mismatch of `kinds` in the cycle of `account`."""
        with self.database.connect() as conn:
            return [r["profile_id"] for r in conn.execute(
                """SELECT DISTINCT profile_id FROM recon.mismatches
                   WHERE cycle_id = %s AND exchange_account = %s AND profile_id IS NOT NULL
                     AND kind = ANY(%s) ORDER BY profile_id""",
                (cycle_id, account, list(kinds))).fetchall()]

    def cycle_succeeded(self, cycle_id: str, account: str) -> bool:
        """Whether `cycle_id` is recorded as a succeeded cycle of `account`."""
        with self.database.connect() as conn:
            return conn.execute("SELECT 1 FROM recon.cycles WHERE cycle_id = %s AND "
                                "exchange_account = %s AND status = %s",
                                (cycle_id, account, CYCLE_SUCCEEDED)).fetchone() is not None

    # --- the parity heartbeat --------------------------------------------------------------------

    def parity_state(self, account: str, cycle_id: str) -> dict:
        """What the heartbeat decides from besides the snapshots: the streaks of the account's
        slices, the slices with an open quarantine, the slices an operator approved for a
        synthetic exit, and the slices the EXIT backfill has GO decisions for in this cycle."""
        with self.database.connect() as conn:
            streaks = conn.execute(
                """SELECT f.profile_id, f.trade_id, f.slice_no, f.consecutive_count,
                          f.first_seen_cycle, f.last_seen_cycle
                   FROM recon.parity_confirmations f JOIN profiles p ON p.id = f.profile_id
                   WHERE p.exchange_account = %s""", (account,)).fetchall()
            quarantined = conn.execute(
                """SELECT q.profile_id, q.trade_id, q.slice_no FROM recon.quarantine q
                   JOIN profiles p ON p.id = q.profile_id
                   WHERE p.exchange_account = %s AND q.released_at IS NULL""",
                (account,)).fetchall()
            approved = conn.execute(
                """SELECT DISTINCT q.profile_id, q.trade_id, q.slice_no FROM recon.quarantine q
                   JOIN profiles p ON p.id = q.profile_id
                   WHERE p.exchange_account = %s AND q.resolution = %s""",
                (account, "approve_synthetic_exit")).fetchall()
            backfill = conn.execute(
                """SELECT DISTINCT profile_id, trade_id, slice_no FROM recon.backfill_decisions
                   WHERE cycle_id = %s AND decision = 'GO'""", (cycle_id,)).fetchall()

        def keys(rows):
            return frozenset((r["profile_id"], r["trade_id"], int(r["slice_no"])) for r in rows)

        return {"streaks": {(r["profile_id"], r["trade_id"], int(r["slice_no"])):
                            (int(r["consecutive_count"]), r["first_seen_cycle"],
                             r["last_seen_cycle"]) for r in streaks},
                "quarantined": keys(quarantined), "approved": keys(approved),
                "backfill_go": keys(backfill)}

    def record_parity_checks(self, cycle_id: str, account: str, checks: list[dict],
                             dry_run: bool) -> dict:
        """The heartbeat's checks of a cycle, its streaks and quarantines, in one transaction
        (`recon_record_parity_checks`)."""
        return self.database.call("recon_record_parity_checks", {
            "p_cycle_id": cycle_id, "p_account": account, "p_checks": checks,
            "p_dry_run": dry_run})

    def parity_history(self, keys: list[tuple[str, str, int]], limit: int = 5) -> list[dict]:
        """The last `limit` checks of each slice in `keys`, newest first."""
        if not keys:
            return []
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT * FROM (
                       SELECT c.profile_id, c.trade_id, c.slice_no, c.cycle_id, c.checked_at,
                              c.virtual_open_qty::float8 AS db_qty,
                              c.exchange_qty::float8 AS exchange_qty,
                              c.mark_price::float8 AS mark_price, c.streak, c.decision,
                              row_number() OVER (PARTITION BY c.profile_id, c.trade_id, c.slice_no
                                                 ORDER BY c.checked_at DESC) AS n
                       FROM recon.parity_checks c
                       WHERE (c.profile_id, c.trade_id, c.slice_no) IN (
                           SELECT * FROM unnest(%s::text[], %s::text[], %s::int[]))) x
                   WHERE n <= %s ORDER BY profile_id, trade_id, slice_no, checked_at DESC""",
                ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
                 limit)).fetchall()

    def parity_decisions(self, cycle_id: str, profile_id: str, decision: str) -> list[dict]:
        """The checks of one profile in one cycle with `decision` (numbers as exact text)."""
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT id AS check_id, cycle_id, exchange_account, profile_id, trade_id,
                          slice_no, symbol, side, virtual_open_qty::text AS qty,
                          mark_price::text AS price, price_source, streak,
                          streak_started_cycle, idempotency_key, reason, checked_at
                   FROM recon.parity_checks
                   WHERE cycle_id = %s AND profile_id = %s AND decision = %s
                   ORDER BY trade_id, slice_no""", (cycle_id, profile_id, decision)).fetchall()

    def profiles_with_parity_decision(self, cycle_id: str, account: str,
                                      decision: str) -> list[str]:
        with self.database.connect() as conn:
            return [r["profile_id"] for r in conn.execute(
                """SELECT DISTINCT profile_id FROM recon.parity_checks
                   WHERE cycle_id = %s AND exchange_account = %s AND decision = %s
                   ORDER BY profile_id""", (cycle_id, account, decision)).fetchall()]

    def resolve_quarantine(self, profile_id: str, trade_id: str, slice_no: int,
                           resolution: str, note: str, operator_run: str) -> dict:
        return self.database.call("recon_resolve_quarantine", {
            "p_profile_id": profile_id, "p_trade_id": trade_id, "p_slice_no": slice_no,
            "p_resolution": resolution, "p_note": note, "p_operator_run": operator_run})

    # --- lock contention -----------------------------------------------------------------------

    def record_lock_contention(self, profile_id: str, cycle_id: str, waited_ms: int,
                               lock_kind: str, lock_object: str | None) -> None:
        with self.database.connect() as conn:
            conn.execute("INSERT INTO recon.lock_contention (profile_id, cycle_id, waited_ms, "
                         "lock_kind, lock_object) VALUES (%s, %s, %s, %s, %s)",
                         (profile_id, cycle_id, waited_ms, lock_kind, lock_object))

    # --- corrections that were not applied -----------------------------------------------------

    def record_refused_correction(self, cycle_id: str, profile_id: str, handler: str,
                                  outcome: str, reason: str, trade_id: str | None,
                                  client_order_id: str | None, dry_run: bool,
                                  evidence: dict[str, Any]) -> int:
        """One correction a check refused or an error stopped (`recon_record_refused_correction`)."""
        return self.database.call("recon_record_refused_correction", {
            "p_cycle_id": cycle_id, "p_profile_id": profile_id, "p_handler": handler,
            "p_outcome": outcome, "p_reason": reason, "p_trade_id": trade_id,
            "p_client_order_id": client_order_id, "p_dry_run": dry_run, "p_evidence": evidence})

    # --- the reconciling gate --------------------------------------------------------------------

    def reconciling_sessions(self, account: str) -> list[dict]:
        """The reconciling sessions of the account's profiles: owner run, since when, how old."""
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT r.profile_id, r.cycle_id AS owner, r.started_at, p.trading_state,
                          extract(epoch FROM now() - r.started_at)::float8 AS age_s
                   FROM recon.reconciling r JOIN profiles p ON p.id = r.profile_id
                   WHERE p.exchange_account = %s ORDER BY r.profile_id""", (account,)).fetchall()

    def reconciling_owner(self, profile_id: str) -> dict | None:
        """The reconciling session of one profile (owner run, age), or None."""
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT profile_id, cycle_id AS owner, started_at,
                          extract(epoch FROM now() - started_at)::float8 AS age_s
                   FROM recon.reconciling WHERE profile_id = %s""", (profile_id,)).fetchone()

    # --- escalation ------------------------------------------------------------------------------

    def escalation_history(self, runs: int) -> dict[str, pd.DataFrame]:
        """What the escalation rules read, in one connection: the last `runs` succeeded cycles of
        each account (`cycles`), their findings (`mismatches`), the last day's lock contention
        (`contention`), failed cycles (`failed`), corrections refused or failed (`refused`), and
        each account's latest clean cycle (`clean`)."""
        with self.database.connect() as conn:
            cycles = _frame(conn, """
                SELECT cycle_id, exchange_account, finished_at FROM (
                    SELECT c.*, row_number() OVER (PARTITION BY exchange_account
                                                   ORDER BY finished_at DESC) AS n
                    FROM recon.cycles c WHERE status = %s) x
                WHERE n <= %s""", (CYCLE_SUCCEEDED, runs))
            mismatches = _frame(conn, f"""
                SELECT cycle_id, {', '.join(MISMATCH_IDENTITY)}, notional_usd::float AS notional_usd
                FROM recon.mismatches WHERE cycle_id = ANY(%s)""", (list(cycles["cycle_id"]),))
            contention = _frame(conn, """
                SELECT id, profile_id, cycle_id, waited_ms, lock_kind, lock_object
                FROM recon.lock_contention
                WHERE observed_at > now() - interval '1 day' ORDER BY id""")
            refused = _frame(conn, """
                SELECT id, cycle_id, profile_id, handler, client_order_id, outcome, reason,
                       evidence->>'error' AS error
                FROM recon.corrections
                WHERE outcome <> %s AND applied_at > now() - interval '1 day' ORDER BY id""",
                             (APPLIED,))
            failed = _frame(conn, """
                SELECT cycle_id, exchange_account, error FROM recon.cycles
                WHERE status = %s AND finished_at > now() - interval '1 day'
                ORDER BY finished_at""", (CYCLE_FAILED,))
            # Each account's latest succeeded cycle with no finding at all: where its current
            # episode of drift began.
            clean = _frame(conn, """
                SELECT DISTINCT ON (c.exchange_account) c.exchange_account, c.cycle_id
                FROM recon.cycles c
                WHERE c.status = %s AND NOT EXISTS (
                    SELECT 1 FROM recon.mismatches m
                    WHERE m.cycle_id = c.cycle_id AND m.exchange_account = c.exchange_account)
                ORDER BY c.exchange_account, c.finished_at DESC""", (CYCLE_SUCCEEDED,))
        return {"cycles": cycles, "mismatches": mismatches, "contention": contention,
                "failed": failed, "refused": refused, "clean": clean}

    def record_alert(self, dedup_key: str, reason: str, exchange_account: str | None,
                     profile_id: str | None, summary: str, details: dict[str, Any],
                     delivery_status: str) -> int | None:
        """Record an alert once (its dedup key), before anything is posted, with its delivery
        status (pending, or not_configured); the new row's id, or None if already recorded."""
        with self.database.connect() as conn:
            row = conn.execute(
                """INSERT INTO recon.alerts (dedup_key, reason, exchange_account, profile_id,
                                             summary, details, delivery_status)
                   VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (dedup_key) DO NOTHING
                   RETURNING id""",
                (dedup_key, reason, exchange_account, profile_id, summary,
                 json.dumps(details), delivery_status)).fetchone()
        return None if row is None else row["id"]

    def alerts_to_deliver(self, alert_ids: list[int] | None = None) -> list[dict]:
        """Pending alerts whose next attempt is due now (the database's clock), oldest first;
        or, with `alert_ids`, those of them that are pending."""
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT id, dedup_key, reason, exchange_account, profile_id, summary, details,
                          attempts, now() AS now
                   FROM recon.alerts WHERE delivery_status = 'pending'
                     AND (CASE WHEN %s::bigint[] IS NULL
                               THEN next_attempt_at IS NULL OR next_attempt_at <= now()
                               ELSE id = ANY(%s::bigint[]) END)
                   ORDER BY id""", (alert_ids, alert_ids)).fetchall()

    def record_delivery_attempt(self, alert_id: int, status: str, error: str | None,
                                next_attempt_at) -> None:
        """One post of an alert: its outcome, the error if any, and when the next one is due."""
        with self.database.connect() as conn:
            conn.execute(
                """UPDATE recon.alerts
                   SET attempts = attempts + 1, last_attempt_at = now(),
                       delivery_status = %s, next_attempt_at = %s, delivery_error = %s,
                       delivered_at = CASE WHEN %s = 'delivered' THEN now() END
                   WHERE id = %s""", (status, next_attempt_at, error, status, alert_id))
