"""The store of the integrity watchdog and the trading gate: recon.watchdog_checks,
recon.watchdog_state, recon.trading_gate_events, and the gate columns of public.profiles.

The gate itself only changes through the SQL functions (`recon_record_watchdog`,
`recon_pause_profile`, `recon_resume_profile`, `recon_auto_resume`), each one transaction under
the profile's lock; this module calls them and reads what they wrote. Every read and write is
one SQL function of db/functions called through the store's `call` (so it works alike over
psycopg and the Supabase Data API); their JSON answers are turned back into the types the
callers use (numbers as float, timestamps as datetime).
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from recon_assets.resources.database import TradingStore


# Columns of the verdicts that are float8 in SQL: JSON numbers, made float again (a whole number
# arrives as an int).
_VERDICT_FLOATS = ("allocated_capital_usd", "mismatch_notional_usd", "ghost_notional_usd",
                   "order_notional_usd", "position_notional_usd", "threshold_pct",
                   "threshold_usd")


def _time(value: str | None) -> datetime | None:
    """A timestamptz as the JSON answer carries it (ISO text), as a datetime."""
    return None if value is None else datetime.fromisoformat(value)


def _times(row: dict, *columns: str) -> dict:
    for column in columns:
        row[column] = _time(row[column])
    return row


def _iso(value: datetime | None) -> str | None:
    """A datetime argument as ISO text (JSON has no timestamps; Postgres casts the text)."""
    return None if value is None else value.isoformat()


class WatchdogStore:
    def __init__(self, database: TradingStore):
        self.database = database

    def now(self) -> datetime:
        """The database's clock: pauses and resumes are stamped by it, so the rule reads it too."""
        return _time(self.database.call("recon_database_now"))

    # --- the watchdog's verdicts ----------------------------------------------------------

    def cycle_mismatches(self, cycle_id: str, account: str) -> pd.DataFrame:
        """The findings the diff recorded for this cycle (the kinds, profiles, notionals and
        details the watchdog charges)."""
        rows = self.database.call("recon_cycle_mismatches",
                                  {"p_cycle_id": cycle_id, "p_account": account})
        for r in rows:
            r["notional_usd"] = float(r["notional_usd"])
        return pd.DataFrame(rows, columns=["kind", "profile_id", "exchange_account", "symbol",
                                           "trade_id", "notional_usd", "details"])

    def not_fully_checked(self, cycle_id: str, account: str) -> dict[str, str]:
        """Profile -> why a finding about it was held back by the recency guard this cycle."""
        return dict(self.database.call("recon_cycle_not_fully_checked",
                                       {"p_cycle_id": cycle_id, "p_account": account}) or {})

    def record_watchdog(self, cycle_id: str, account: str, verdicts: list[dict],
                        run_id: str, uncharged: list[dict] | None = None) -> dict:
        """The cycle's verdicts, the pause of each profile that tripped, and the drift charged to
        no profile, in one transaction."""
        return self.database.call("recon_record_watchdog", {
            "p_cycle_id": cycle_id, "p_account": account, "p_verdicts": verdicts,
            "p_run_id": run_id, "p_uncharged": uncharged or []})

    def verdicts(self, cycle_id: str, account: str) -> list[dict]:
        """The verdicts recorded for a cycle, with each profile's gate as it is now."""
        rows = self.database.call("recon_watchdog_verdicts",
                                  {"p_cycle_id": cycle_id, "p_account": account})
        for r in rows:
            for column in _VERDICT_FLOATS:
                r[column] = float(r[column])
            _times(r, "paused_at")
        return rows

    def cycle_outcomes(self, cycle_ids: list[str], profile_id: str) -> dict[str, dict]:
        """Per cycle id: its recorded status (None when recon.cycles has no row) and the
        profile's verdict in it (`clean`, `tripped`, `findings`; None when not judged)."""
        rows = self.database.call("recon_cycle_outcomes", {
            "p_cycle_ids": [str(c) for c in cycle_ids], "p_profile_id": profile_id})
        return {r["cycle_id"]: r for r in rows}

    # --- the trading gate -----------------------------------------------------------------

    def gates(self, account: str) -> list[dict]:
        """Every profile of the account with its gate (public.profiles)."""
        return [_times(r, "paused_at", "last_auto_resume_at")
                for r in self.database.call("recon_account_gates", {"p_account": account})]

    def record_resume_outlook(self, profile_id: str, account: str, outlook: dict | None,
                              clean_cycles: int) -> None:
        """What holds the profile's auto-resume back, and since when it could happen (null when
        the profile is not paused)."""
        self.database.call("recon_record_resume_outlook", {
            "p_profile_id": profile_id, "p_account": account, "p_clean_cycles": clean_cycles,
            "p_held_back_by": None if outlook is None else list(outlook["held_back_by"]),
            "p_conditions": None if outlook is None else outlook["conditions"],
            "p_earliest_at": None if outlook is None else _iso(outlook["earliest_at"]),
            "p_clean_cycles_needed": None if outlook is None else outlook["clean_cycles_needed"]})

    def resume_outlook(self, account: str) -> list[dict]:
        """The recorded outlook of every profile of the account, with its gate."""
        return [_times(r, "paused_at", "last_auto_resume_at", "resume_earliest_at",
                       "resume_checked_at")
                for r in self.database.call("recon_resume_outlook", {"p_account": account})]

    def auto_resume(self, profile_id: str, cycle_id: str, run_id: str, paused_at: datetime,
                    last_auto_resume_at: datetime | None, evidence: dict) -> dict:
        return self.database.call("recon_auto_resume", {
            "p_profile_id": profile_id, "p_cycle_id": cycle_id, "p_run_id": run_id,
            "p_expect_paused_at": _iso(paused_at),
            "p_expect_last_auto_resume_at": _iso(last_auto_resume_at),
            "p_evidence": evidence})

    def pause(self, profile_id: str, reason: str, run_id: str) -> dict:
        return self.database.call("recon_pause_profile", {
            "p_profile_id": profile_id, "p_reason": reason, "p_run_id": run_id})

    def resume(self, profile_id: str, reason: str, run_id: str) -> dict:
        return self.database.call("recon_resume_profile", {
            "p_profile_id": profile_id, "p_reason": reason, "p_run_id": run_id})

    def gate_events(self, profile_id: str, limit: int = 20) -> list[dict]:
        return [_times(r, "at") for r in self.database.call(
            "recon_gate_events", {"p_profile_id": profile_id, "p_limit": limit})]
