"""The store of the policy replay: the recorded history it folds (`recon_policy_replay_history`,
one statement) and its own records (recon.policy_replays, recon.policy_replay_events, through
`recon_record_policy_replay`). Nothing here writes a trading table."""

from __future__ import annotations

from datetime import datetime

from recon_assets.core.replay import ReplayHistory
from recon_assets.resources.database import TradingStore, as_datetime


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def events_query(replay_id: str) -> str:
    """The SQL an analyst runs for one replay's rows (shown in the UI; never executed here)."""
    return ("SELECT * FROM recon.policy_replay_events WHERE replay_id = "
            f"'{replay_id}' ORDER BY at, policy;")


class ReplayStore:
    def __init__(self, database: TradingStore):
        self.database = database

    def history(self, until: datetime | None, accounts: list[str]) -> ReplayHistory:
        """Everything recorded before `until` for `accounts` (empty: every account)."""
        raw = self.database.call("recon_policy_replay_history",
                                 {"p_until": _iso(until), "p_accounts": list(accounts)})
        for row in raw["cycles"]:
            row["started_at"] = as_datetime(row["started_at"])
        for row in raw["verdicts"]:
            row["checked_at"] = as_datetime(row["checked_at"])
        for row in raw["gate_events"]:
            row["at"] = as_datetime(row["at"])
        for row in raw["operator_releases"]:
            row["released_at"] = as_datetime(row["released_at"])
        return ReplayHistory(**raw)

    def record(self, replay_id: str, *, since: datetime | None, until: datetime | None,
               accounts: list[str], profiles: list[str], overrides: dict, live_flags: dict,
               replay_flags: dict, cycles: int, fidelity_ok: bool,
               first_difference: dict | None, differences: int, summary: list[dict],
               events: list[dict]) -> dict:
        """The replay and its events, in one transaction (a retried run records nothing twice)."""
        return self.database.call("recon_record_policy_replay", {
            "p_replay_id": replay_id, "p_since": _iso(since), "p_until": _iso(until),
            "p_accounts": accounts, "p_profiles": profiles, "p_overrides": overrides,
            "p_live_flags": live_flags, "p_replay_flags": replay_flags, "p_cycles": cycles,
            "p_fidelity_ok": fidelity_ok, "p_first_difference": first_difference,
            "p_differences": differences, "p_summary": summary,
            "p_events": [{**e, "at": _iso(e["at"])} for e in events]})
