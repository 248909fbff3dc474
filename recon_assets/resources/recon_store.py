"""The store of the reconciler's own history in schema `recon`: cycles, mismatches, lock contention
and alerts. Every query the Dagster definitions make of these tables is a method here, so "what
reads or writes recon.X" is one search, and another backend implements one class.

Every method is one call of a SQL function of db/functions (`call()`), so the store works
the same over psycopg and over the Supabase Data API (rpc()); results arrive JSON-shaped, and
timestamps are turned back into datetimes here. Money is not written here: corrections go
through the handler functions, under the profile's lock.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from recon_assets.core.escalation import MISMATCH_IDENTITY
from recon_assets.core.rules import APPLIED, CYCLE_FAILED, CYCLE_SUCCEEDED, LIFECYCLE_HANDLERS
from recon_assets.resources.database import TradingStore, as_datetime


# The columns of each part of `escalation_history` (`recon_escalation_history`'s JSON).
ESCALATION_COLUMNS = {
    "cycles": ["cycle_id", "exchange_account", "finished_at"],
    "mismatches": ["cycle_id", *MISMATCH_IDENTITY, "notional_usd"],
    "contention": ["id", "profile_id", "cycle_id", "waited_ms", "lock_kind", "lock_object"],
    "failed": ["cycle_id", "exchange_account", "error"],
    "refused": ["id", "cycle_id", "profile_id", "handler", "client_order_id", "outcome",
                "reason", "error"],
    "clean": ["exchange_account", "cycle_id"],
}


def _with_datetimes(row: dict, *columns: str) -> dict:
    """A row from `call()` (JSON) with its timestamp columns back as datetimes."""
    return {**row, **{c: as_datetime(row.get(c)) for c in columns}}


class ReconStore:
    """Reads and writes recon.cycles, recon.mismatches, recon.lock_contention and recon.alerts."""

    def __init__(self, database: TradingStore):
        self.database = database

    # --- cycles and their findings -----------------------------------------------------------

    def record_cycle(self, cycle_id: str, account: str, started_at: str,
                     mismatches: list[dict], evidence: dict) -> int:
        """A succeeded cycle, the evidence its diff was made from (db_read_at, exchange_read_at,
        db_run_id, exchange_run_id), the profiles it could not fully check (not_fully_checked)
        and its findings (`recon_record_cycle`, one transaction); returns how many findings
        were newly recorded (0 when the cycle was already recorded)."""
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
        return as_datetime(self.database.call("recon_database_created_at"))

    def latest_succeeded_cycle(self, account: str, cycle_id: str = "") -> dict | None:
        """The account's latest succeeded cycle (or the cycle `cycle_id` if it succeeded), with
        the age of its evidence in seconds by the database clock: from the earlier of its two
        snapshot reads (from when it finished, for a cycle recorded without them)."""
        rows = self.database.call("recon_latest_succeeded_cycle", {
            "p_account": account, "p_status": CYCLE_SUCCEEDED, "p_cycle_id": cycle_id})
        return _with_datetimes(rows[0], "finished_at", "db_read_at", "exchange_read_at") \
            if rows else None

    def actionable_mismatches(self, cycle_id: str, profile_id: str,
                              kinds: tuple[str, ...]) -> list[dict]:
        """The cycle's mismatches of `kinds` for the profile, joined with the order as the
        database holds it now (numbers as exact text)."""
        return self.database.call("recon_actionable_mismatches", {
            "p_cycle_id": cycle_id, "p_profile_id": profile_id, "p_kinds": list(kinds)})

    def take_order_probes(self, account: str, cycle_id: str, wanted: int, cap: int) -> int:
        """How many of `wanted` single-order probes a correction run of the cycle may make on
        `account`: what is left of the cycle's budget of `cap`, shared by every run of it."""
        return int(self.database.call("recon_take_order_probes", {
            "p_account": account, "p_cycle_id": cycle_id, "p_wanted": int(wanted),
            "p_cap": int(cap)}))

    def profiles_with_mismatches(self, cycle_id: str, account: str,
                                 kinds: tuple[str, ...]) -> list[str]:
        """The profiles with at least one mismatch of `kinds` in the cycle of `account`."""
        return self.database.call("recon_profiles_with_mismatches", {
            "p_cycle_id": cycle_id, "p_account": account, "p_kinds": list(kinds)})

    def refusal_streak(self, profile_id: str) -> dict:
        """How many of the profile's latest lifecycle corrections in a row were refused or
        failed, when the newest was, and the database's clock."""
        (row,) = self.database.call("recon_refusal_streak", {
            "p_profile_id": profile_id, "p_handlers": list(LIFECYCLE_HANDLERS)})
        return {"refusals": int(row["refusals"]),
                "last_refused_at": as_datetime(row["last_refused_at"]),
                "now": as_datetime(row["now"])}

    def cycle_succeeded(self, cycle_id: str, account: str) -> bool:
        """Whether `cycle_id` is recorded as a succeeded cycle of `account`."""
        return bool(self.database.call("recon_cycle_has_status", {
            "p_cycle_id": cycle_id, "p_account": account, "p_status": CYCLE_SUCCEEDED}))

    # --- the parity heartbeat --------------------------------------------------------------------

    def parity_state(self, account: str, cycle_id: str) -> dict:
        """What the heartbeat decides from besides the snapshots: the streaks of the account's
        slices, the slices with an open quarantine and their runs of supported cycles, the ghost
        episodes an operator approved a synthetic exit for, the slices the EXIT backfill has GO
        decisions for in this cycle, and the lifecycle corrections refused and not resolved."""
        state = self.database.call("recon_parity_state", {"p_account": account,
                                                          "p_cycle_id": cycle_id})

        def key(r):
            return (r["profile_id"], r["trade_id"], int(r["slice_no"]))

        approved: dict = {}
        for r in state["approved"]:
            if r.get("episode"):
                approved[key(r)] = approved.get(key(r), frozenset()) | {r["episode"]}
        return {"streaks": {key(r): (int(r["consecutive_count"]), r["first_seen_cycle"],
                                     r["last_seen_cycle"]) for r in state["streaks"]},
                "quarantined": frozenset(key(r) for r in state["quarantined"]),
                "clear_streaks": {key(r): (int(r["clear_count"]), r["clear_started_cycle"],
                                           r["clear_last_cycle"])
                                  for r in state["quarantined"] if r.get("clear_count")},
                "approved": approved,
                "backfill_go": frozenset(key(r) for r in state["backfill_go"]),
                "refusals": list(state.get("refusals") or [])}

    def record_parity_checks(self, cycle_id: str, account: str, checks: list[dict],
                             dry_run: bool, run_id: str | None = None) -> dict:
        """The heartbeat's checks of a cycle, its streaks and quarantines, in one transaction
        (`recon_record_parity_checks`), with the run (attempt) that recorded them."""
        return self.database.call("recon_record_parity_checks", {
            "p_cycle_id": cycle_id, "p_account": account, "p_checks": checks,
            "p_dry_run": dry_run, "p_run_id": run_id})

    def parity_history(self, keys: list[tuple[str, str, int]], limit: int = 5) -> list[dict]:
        """The last `limit` checks of each slice in `keys`, newest first."""
        if not keys:
            return []
        rows = self.database.call("recon_parity_history", {
            "p_slices": [list(k) for k in keys], "p_limit": limit})
        return [_with_datetimes(r, "checked_at") for r in rows]

    def parity_decisions(self, cycle_id: str, profile_id: str, decision: str) -> list[dict]:
        """The checks of one profile in one cycle with `decision` (numbers as exact text)."""
        rows = self.database.call("recon_parity_decisions", {
            "p_cycle_id": cycle_id, "p_profile_id": profile_id, "p_decision": decision})
        return [_with_datetimes(r, "checked_at") for r in rows]

    def profiles_with_parity_decision(self, cycle_id: str, account: str,
                                      decision: str) -> list[str]:
        return self.database.call("recon_profiles_with_parity_decision", {
            "p_cycle_id": cycle_id, "p_account": account, "p_decision": decision})

    def resolve_quarantine(self, profile_id: str, trade_id: str, slice_no: int,
                           resolution: str, note: str, operator_run: str) -> dict:
        return self.database.call("recon_resolve_quarantine", {
            "p_profile_id": profile_id, "p_trade_id": trade_id, "p_slice_no": slice_no,
            "p_resolution": resolution, "p_note": note, "p_operator_run": operator_run})

    # --- lock contention -----------------------------------------------------------------------

    def record_lock_contention(self, profile_id: str, cycle_id: str, waited_ms: int,
                               lock_kind: str, lock_object: str | None) -> None:
        self.database.call("recon_record_lock_contention", {
            "p_profile_id": profile_id, "p_cycle_id": cycle_id, "p_waited_ms": waited_ms,
            "p_lock_kind": lock_kind, "p_lock_object": lock_object})

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
        rows = self.database.call("recon_reconciling_sessions", {"p_account": account})
        return [_with_datetimes(r, "started_at") for r in rows]

    def reconciling_owner(self, profile_id: str) -> dict | None:
        """The reconciling session of one profile (owner run, age), or None."""
        rows = self.database.call("recon_reconciling_sessions", {"p_profile_id": profile_id})
        return _with_datetimes(rows[0], "started_at") if rows else None

    # --- escalation ------------------------------------------------------------------------------

    def escalation_history(self, runs: int) -> dict[str, pd.DataFrame]:
        """What the escalation rules read, in one statement: the last `runs` succeeded cycles of
        each account (`cycles`), their findings (`mismatches`), the last day's lock contention
        (`contention`), failed cycles (`failed`), corrections refused or failed (`refused`), and
        each account's latest clean cycle (`clean`)."""
        parts = self.database.call("recon_escalation_history", {
            "p_runs": runs, "p_succeeded": CYCLE_SUCCEEDED, "p_failed": CYCLE_FAILED,
            "p_applied": APPLIED})
        frames = {name: pd.DataFrame(parts[name], columns=columns)
                  for name, columns in ESCALATION_COLUMNS.items()}
        frames["cycles"]["finished_at"] = pd.to_datetime(frames["cycles"]["finished_at"],
                                                         utc=True, format="ISO8601")
        return frames

    def record_alert(self, dedup_key: str, reason: str, exchange_account: str | None,
                     profile_id: str | None, summary: str, details: dict[str, Any],
                     delivery_status: str) -> int | None:
        """Record an alert once (its dedup key), before anything is posted, with its delivery
        status (pending, or not_configured); the new row's id, or None if already recorded."""
        return self.database.call("recon_record_alert", {
            "p_dedup_key": dedup_key, "p_reason": reason, "p_exchange_account": exchange_account,
            "p_profile_id": profile_id, "p_summary": summary,
            "p_details": json.loads(json.dumps(details, default=str)),
            "p_delivery_status": delivery_status})

    def alerts_to_deliver(self, alert_ids: list[int] | None = None) -> list[dict]:
        """Pending alerts whose next attempt is due now (the database's clock), oldest first;
        or, with `alert_ids`, those of them that are pending."""
        rows = self.database.call("recon_alerts_to_deliver", {
            "p_alert_ids": None if alert_ids is None else list(alert_ids)})
        return [_with_datetimes(r, "now") for r in rows]

    def record_delivery_attempt(self, alert_id: int, status: str, error: str | None,
                                next_attempt_at) -> None:
        """One post of an alert: its outcome, the error if any, and when the next one is due."""
        self.database.call("recon_record_delivery_attempt", {
            "p_alert_id": alert_id, "p_status": status, "p_error": error,
            "p_next_attempt_at": None if next_attempt_at is None
            else next_attempt_at.isoformat() if hasattr(next_attempt_at, "isoformat")
            else next_attempt_at})
