"""The store of the EXIT backfill (migration 0011): what the matching reads besides the snapshots
(the fills `applied_fills` books already, the trade id hints, the operators' reviews), the
decisions of each cycle (`recon.backfill_decisions`), and the operators' calls on them.

Every read is one SQL function of db/functions called through the store's `call` (so it works
alike over psycopg and the Supabase Data API); decisions come back with their numbers as exact
text and their timestamps as datetime."""

from __future__ import annotations

import pandas as pd

from datetime import datetime

from recon_assets.core.backfill import PairKey, Review
from recon_assets.resources.database import TradingStore


def _decision(row: dict) -> dict:
    """A decision as the apply jobs read it back (numbers as exact text, as the SQL function
    gives them; its timestamps, ISO text in the JSON answer, as datetime)."""
    for column in ("filled_at", "created_at"):
        if row[column] is not None:
            row[column] = datetime.fromisoformat(row[column])
    return row


class BackfillStore:
    def __init__(self, database: TradingStore):
        self.database = database

    def matching_state(self, account: str, fills: pd.DataFrame) -> dict:
        """`booked`: (symbol, fill id) of the window's fills that applied_fills holds; `hints`:
        exchange order id -> (profile, trade); `reviews`: the latest operator call per pair."""
        symbols = [str(s) for s in fills["symbol"]] if len(fills) else []
        fill_ids = [str(f) for f in fills["exchange_fill_id"]] if len(fills) else []
        state = self.database.call("recon_backfill_matching_state", {
            "p_account": account, "p_fills": [list(p) for p in zip(symbols, fill_ids)]})
        reviews = state["reviews"]
        pairs: dict[PairKey, Review] = {
            (r["symbol"], r["exchange_fill_id"], r["profile_id"], r["trade_id"],
             int(r["slice_no"])): Review(r["verdict"], int(r["id"]), r["note"]) for r in reviews}
        return {"booked": frozenset((symbol, fill_id) for symbol, fill_id in state["booked"]),
                "hints": {r["exchange_order_id"]: (r["profile_id"], r["trade_id"])
                          for r in state["hints"]},
                "reviews": pairs}

    def record_decisions(self, cycle_id: str, account: str, decisions: list[dict],
                         dry_run: bool, run_id: str | None = None) -> dict:
        """A cycle's decisions, once (`recon_record_backfill_decisions`), with the run
        (attempt) that recorded them."""
        return self.database.call("recon_record_backfill_decisions", {
            "p_cycle_id": cycle_id, "p_account": account, "p_decisions": decisions,
            "p_dry_run": dry_run, "p_run_id": run_id})

    def decisions(self, cycle_id: str, profile_id: str, decision: str) -> list[dict]:
        """One profile's decisions of one cycle with `decision`, in the order they were made."""
        return [_decision(r) for r in self.database.call("recon_backfill_decisions", {
            "p_cycle_id": cycle_id, "p_profile_id": profile_id, "p_decision": decision})]

    def profiles_with_decision(self, cycle_id: str, account: str, decision: str) -> list[str]:
        return list(self.database.call(
            "recon_profiles_with_backfill_decision",
            {"p_cycle_id": cycle_id, "p_account": account, "p_decision": decision}))

    def decision(self, decision_id: int) -> dict | None:
        rows = self.database.call("recon_backfill_decisions", {"p_decision_id": decision_id})
        return _decision(rows[0]) if rows else None

    def pair_in_cycle(self, cycle_id: str, pair: dict) -> dict | None:
        """The decision of `cycle_id` about the same fill and slice as `pair` (a decision)."""
        rows = self.database.call("recon_backfill_decisions", {
            "p_cycle_id": cycle_id, "p_account": pair["exchange_account"],
            "p_symbol": pair["symbol"], "p_exchange_fill_id": pair["exchange_fill_id"],
            "p_profile_id": pair["profile_id"], "p_trade_id": pair["trade_id"],
            "p_slice_no": pair["slice_no"]})
        return _decision(rows[0]) if rows else None

    def review(self, decision_id: int, verdict: str, note: str, run_id: str) -> dict:
        """An operator's call, recorded (`recon_review_backfill`)."""
        return self.database.call("recon_review_backfill", {
            "p_decision_id": decision_id, "p_verdict": verdict, "p_note": note,
            "p_run_id": run_id})
