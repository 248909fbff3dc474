"""The store of the integrity watchdog and the trading gate: recon.watchdog_checks,
recon.watchdog_state, recon.trading_gate_events, and the gate columns of public.profiles.

The gate itself only changes through the SQL functions (`recon_record_watchdog`,
`recon_pause_profile`, `recon_resume_profile`, `recon_auto_resume`), each one transaction under
the profile's lock; this module calls them and reads what they wrote.
"""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd

from recon_assets.resources.database import PostgresStore


class WatchdogStore:
    def __init__(self, database: PostgresStore):
        self.database = database

    def now(self) -> datetime:
        """The database's clock: pauses and resumes are stamped by it, so the rule reads it too."""
        with self.database.connect() as conn:
            return conn.execute("SELECT now() AS now").fetchone()["now"]

    # --- the watchdog's verdicts ----------------------------------------------------------

    def cycle_mismatches(self, cycle_id: str, account: str) -> pd.DataFrame:
        """The findings the diff recorded for this cycle (the kinds, profiles, notionals and
        details the watchdog charges)."""
        with self.database.connect() as conn:
            rows = conn.execute(
                """SELECT kind, profile_id, exchange_account, symbol, trade_id,
                          notional_usd::float8 AS notional_usd, details
                   FROM recon.mismatches WHERE cycle_id = %s AND exchange_account = %s
                   ORDER BY id""", (cycle_id, account)).fetchall()
        return pd.DataFrame(rows, columns=["kind", "profile_id", "exchange_account", "symbol",
                                           "trade_id", "notional_usd", "details"])

    def record_watchdog(self, cycle_id: str, account: str, verdicts: list[dict],
                        run_id: str) -> dict:
        """The cycle's verdicts, and the pause of each profile that tripped, in one transaction."""
        return self.database.call("recon_record_watchdog", {
            "p_cycle_id": cycle_id, "p_account": account, "p_verdicts": verdicts,
            "p_run_id": run_id})

    def verdicts(self, cycle_id: str, account: str) -> list[dict]:
        """The verdicts recorded for a cycle, with each profile's gate as it is now."""
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT w.profile_id, w.allocated_capital_usd::float8 AS allocated_capital_usd,
                          w.mismatch_notional_usd::float8 AS mismatch_notional_usd,
                          w.ghost_notional_usd::float8 AS ghost_notional_usd,
                          w.order_notional_usd::float8 AS order_notional_usd,
                          w.position_notional_usd::float8 AS position_notional_usd,
                          w.threshold_pct::float8 AS threshold_pct,
                          w.threshold_usd::float8 AS threshold_usd, w.findings, w.tripped,
                          w.clean, w.reason, p.trading_state, p.pause_source, p.paused_at
                   FROM recon.watchdog_checks w JOIN public.profiles p ON p.id = w.profile_id
                   WHERE w.cycle_id = %s AND w.exchange_account = %s ORDER BY w.profile_id""",
                (cycle_id, account)).fetchall()

    def cycle_outcomes(self, cycle_ids: list[str], profile_id: str) -> dict[str, dict]:
        """Per cycle id: its recorded status (None when recon.cycles has no row) and the
        profile's verdict in it (`clean`, `tripped`, `findings`; None when not judged)."""
        with self.database.connect() as conn:
            rows = conn.execute(
                """SELECT u.id AS cycle_id, c.status, c.error, w.clean, w.tripped, w.findings
                   FROM unnest(%s::text[]) AS u(id)
                   LEFT JOIN recon.cycles c ON c.cycle_id = u.id
                   LEFT JOIN recon.watchdog_checks w
                          ON w.cycle_id = u.id AND w.profile_id = %s""",
                (cycle_ids, profile_id)).fetchall()
        return {r["cycle_id"]: r for r in rows}

    # --- the trading gate -----------------------------------------------------------------

    def gates(self, account: str) -> list[dict]:
        """Every profile of the account with its gate (public.profiles)."""
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT id AS profile_id, exchange_account, trading_state, pause_source,
                          paused_at, last_auto_resume_at
                   FROM public.profiles WHERE exchange_account = %s ORDER BY id""",
                (account,)).fetchall()

    def record_resume_outlook(self, profile_id: str, account: str, outlook: dict | None,
                              clean_cycles: int) -> None:
        """What holds the profile's auto-resume back, and since when it could happen (null when
        the profile is not paused)."""
        with self.database.connect() as conn:
            conn.execute(
                """INSERT INTO recon.watchdog_state AS w
                       (profile_id, exchange_account, clean_cycles, resume_held_back_by,
                        resume_conditions, resume_earliest_at, resume_clean_cycles_needed,
                        resume_checked_at, updated_at)
                   VALUES (%(p)s, %(a)s, %(n)s, %(held)s, %(conditions)s, %(earliest)s,
                           %(needed)s, now(), now())
                   ON CONFLICT (profile_id) DO UPDATE
                      SET clean_cycles = EXCLUDED.clean_cycles,
                          resume_held_back_by = EXCLUDED.resume_held_back_by,
                          resume_conditions = EXCLUDED.resume_conditions,
                          resume_earliest_at = EXCLUDED.resume_earliest_at,
                          resume_clean_cycles_needed = EXCLUDED.resume_clean_cycles_needed,
                          resume_checked_at = EXCLUDED.resume_checked_at,
                          updated_at = EXCLUDED.updated_at""",
                {"p": profile_id, "a": account, "n": clean_cycles,
                 "held": None if outlook is None else list(outlook["held_back_by"]),
                 "conditions": None if outlook is None else json.dumps(outlook["conditions"]),
                 "earliest": None if outlook is None else outlook["earliest_at"],
                 "needed": None if outlook is None else outlook["clean_cycles_needed"]})

    def resume_outlook(self, account: str) -> list[dict]:
        """The recorded outlook of every profile of the account, with its gate."""
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT p.id AS profile_id, p.trading_state, p.pause_source, p.paused_at,
                          p.last_auto_resume_at, w.resume_held_back_by, w.resume_conditions,
                          w.resume_earliest_at, w.resume_clean_cycles_needed, w.clean_cycles,
                          w.resume_checked_at
                   FROM public.profiles p LEFT JOIN recon.watchdog_state w ON w.profile_id = p.id
                   WHERE p.exchange_account = %s ORDER BY p.id""", (account,)).fetchall()

    def auto_resume(self, profile_id: str, cycle_id: str, run_id: str, paused_at: datetime,
                    last_auto_resume_at: datetime | None, evidence: dict) -> dict:
        return self.database.call("recon_auto_resume", {
            "p_profile_id": profile_id, "p_cycle_id": cycle_id, "p_run_id": run_id,
            "p_expect_paused_at": paused_at, "p_expect_last_auto_resume_at": last_auto_resume_at,
            "p_evidence": evidence})

    def pause(self, profile_id: str, reason: str, run_id: str) -> dict:
        return self.database.call("recon_pause_profile", {
            "p_profile_id": profile_id, "p_reason": reason, "p_run_id": run_id})

    def resume(self, profile_id: str, reason: str, run_id: str) -> dict:
        return self.database.call("recon_resume_profile", {
            "p_profile_id": profile_id, "p_reason": reason, "p_run_id": run_id})

    def gate_events(self, profile_id: str, limit: int = 20) -> list[dict]:
        with self.database.connect() as conn:
            return conn.execute(
                """SELECT id, action, previous_state, previous_pause_source, trading_state,
                          pause_source, reason, cycle_id, run_id, evidence, at
                   FROM recon.trading_gate_events WHERE profile_id = %s
                   ORDER BY id DESC LIMIT %s""", (profile_id, limit)).fetchall()
