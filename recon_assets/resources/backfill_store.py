"""The store of the EXIT backfill (migration 0011): what the matching reads besides the snapshots
(the fills `applied_fills` books already, the trade id hints, the operators' reviews), the
decisions of each cycle (`recon.backfill_decisions`), and the operators' calls on them."""

from __future__ import annotations

import pandas as pd

from recon_assets.core.backfill import PairKey, Review
from recon_assets.resources.database import PostgresStore

# A decision as the apply jobs read it back (numbers as exact text).
_DECISION = """SELECT id AS decision_id, cycle_id, exchange_account, symbol, exchange_fill_id,
                      exchange_order_id, client_order_id, fill_side, fill_qty::text AS fill_qty,
                      fill_price::text AS fill_price, fee_usd::text AS fee_usd, filled_at,
                      profile_id, trade_id, slice_no, match_mode, strong, assignable, decision,
                      reason, idempotency_key, created_at
               FROM recon.backfill_decisions"""


class BackfillStore:
    def __init__(self, database: PostgresStore):
        self.database = database

    def matching_state(self, account: str, fills: pd.DataFrame) -> dict:
        """`booked`: (symbol, fill id) of the window's fills that applied_fills holds; `hints`:
        exchange order id -> (profile, trade); `reviews`: the latest operator call per pair."""
        symbols = [str(s) for s in fills["symbol"]] if len(fills) else []
        fill_ids = [str(f) for f in fills["exchange_fill_id"]] if len(fills) else []
        with self.database.connect() as conn:
            booked = conn.execute(
                """SELECT symbol, exchange_fill_id FROM public.applied_fills
                   WHERE exchange_account = %s AND (symbol, exchange_fill_id) IN (
                       SELECT * FROM unnest(%s::text[], %s::text[]))""",
                (account, symbols, fill_ids)).fetchall()
            hints = conn.execute(
                "SELECT exchange_order_id, profile_id, trade_id FROM recon.exit_fill_hints "
                "WHERE exchange_account = %s", (account,)).fetchall()
            reviews = conn.execute(
                """SELECT DISTINCT ON (symbol, exchange_fill_id, profile_id, trade_id, slice_no)
                          symbol, exchange_fill_id, profile_id, trade_id, slice_no, verdict, id,
                          note
                   FROM recon.backfill_reviews WHERE exchange_account = %s
                   ORDER BY symbol, exchange_fill_id, profile_id, trade_id, slice_no, id DESC""",
                (account,)).fetchall()
        pairs: dict[PairKey, Review] = {
            (r["symbol"], r["exchange_fill_id"], r["profile_id"], r["trade_id"],
             int(r["slice_no"])): Review(r["verdict"], int(r["id"]), r["note"]) for r in reviews}
        return {"booked": frozenset((r["symbol"], r["exchange_fill_id"]) for r in booked),
                "hints": {r["exchange_order_id"]: (r["profile_id"], r["trade_id"]) for r in hints},
                "reviews": pairs}

    def record_decisions(self, cycle_id: str, account: str, decisions: list[dict],
                         dry_run: bool) -> dict:
        """A cycle's decisions, once (`recon_record_backfill_decisions`)."""
        return self.database.call("recon_record_backfill_decisions", {
            "p_cycle_id": cycle_id, "p_account": account, "p_decisions": decisions,
            "p_dry_run": dry_run})

    def decisions(self, cycle_id: str, profile_id: str, decision: str) -> list[dict]:
        """One profile's decisions of one cycle with `decision`, in the order they were made."""
        with self.database.connect() as conn:
            return conn.execute(
                _DECISION + " WHERE cycle_id = %s AND profile_id = %s AND decision = %s "
                            "ORDER BY filled_at, symbol, exchange_fill_id",
                (cycle_id, profile_id, decision)).fetchall()

    def profiles_with_decision(self, cycle_id: str, account: str, decision: str) -> list[str]:
        with self.database.connect() as conn:
            return [r["profile_id"] for r in conn.execute(
                """SELECT DISTINCT profile_id FROM recon.backfill_decisions
                   WHERE cycle_id = %s AND exchange_account = %s AND decision = %s
                     AND profile_id IS NOT NULL ORDER BY profile_id""",
                (cycle_id, account, decision)).fetchall()]

    def decision(self, decision_id: int) -> dict | None:
        with self.database.connect() as conn:
            return conn.execute(_DECISION + " WHERE id = %s", (decision_id,)).fetchone()

    def pair_in_cycle(self, cycle_id: str, pair: dict) -> dict | None:
        """The decision of `cycle_id` about the same fill and slice as `pair` (a decision)."""
        with self.database.connect() as conn:
            return conn.execute(
                _DECISION + """ WHERE cycle_id = %s AND exchange_account = %s AND symbol = %s
                                  AND exchange_fill_id = %s AND profile_id = %s
                                  AND trade_id = %s AND slice_no = %s""",
                (cycle_id, pair["exchange_account"], pair["symbol"], pair["exchange_fill_id"],
                 pair["profile_id"], pair["trade_id"], pair["slice_no"])).fetchone()

    def review(self, decision_id: int, verdict: str, note: str, run_id: str) -> dict:
        """An operator's call, recorded (`recon_review_backfill`)."""
        return self.database.call("recon_review_backfill", {
            "p_decision_id": decision_id, "p_verdict": verdict, "p_note": note,
            "p_run_id": run_id})
