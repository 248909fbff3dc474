"""The store of `recon.exchange_fills` and `recon.exchange_fill_cursors` (migration 0004; a
fill's leg, `position_side`, since migration 0020): the exchange fills read so far, and where
reading stopped per account and symbol; and `recon.exchange_income_cursors` (migration 0014):
where each account's income sweep stopped.

Every read and write is one SQL function of db/functions called through the store's `call` (so
it works alike over psycopg and the Supabase Data API); `save_and_read_window` is one function,
so one transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from recon_assets.core.exchange_snapshot import Cursor
from recon_assets.resources.database import TradingStore


def _text(value: Any) -> str | None:
    """A number of a fill as text in the JSON argument (JSON has neither Decimal nor NaN). The
    SQL function casts qty and price (floats) through float8, as they were sent before, and the
    fees (Decimal) to exact numeric."""
    return None if value is None else str(value)


def _iso(value: datetime | None) -> str | None:
    """A datetime (or pandas Timestamp) argument as ISO text; Postgres casts it to timestamptz."""
    return None if value is None else value.isoformat()


class FillStore:
    """Reads and writes the fills the exchange snapshot has read, and the fill cursors."""

    def __init__(self, database: TradingStore):
        self.database = database

    def cursors(self, account: str) -> dict[str, Cursor]:
        """Where the last fill read of each symbol of `account` stopped."""
        rows = self.database.call("recon_fill_cursors", {"p_account": account})
        return {r["symbol"]: Cursor(r["last_fill_id"], r["activity_key"], r["read_at_ms"]) for r in rows}

    def income_cursor(self, account: str) -> tuple[int, int] | None:
        """(last income time read, when the sweep ran), both ms, or None before the first."""
        rows = self.database.call("recon_income_cursor", {"p_account": account})
        return (rows[0]["last_income_ms"], rows[0]["swept_ms"]) if rows else None

    def known_client_ids(self, account: str, order_ids: list[str]) -> dict[str, str]:
        """client_order_ids already resolved for these exchange order ids in earlier cycles."""
        if not order_ids:
            return {}
        rows = self.database.call("recon_known_client_ids",
                                  {"p_account": account, "p_order_ids": list(order_ids)})
        return {r["exchange_order_id"]: r["client_order_id"] for r in rows}


    def unresolved_orders(self, account: str, since: datetime) -> list[tuple[str, str]]:
        """(exchange order id, symbol) of stored fills since `since` whose client_order_id is unknown."""
        rows = self.database.call("recon_unresolved_orders",
                                  {"p_account": account, "p_since": _iso(since)})
        return [(r["exchange_order_id"], r["symbol"]) for r in rows]


    def save_and_read_window(self, account: str, run_id: str, fills: list[dict],
                                cursors: dict[str, dict], learnt: dict[str, str],
                                window_start: datetime, income_cursor: dict | None = None
                                ) -> tuple[int, list[dict]]:
        """In one transaction: store the new fills (once each), fill in the client_order_ids learnt
        this cycle (`learnt`: exchange order id -> client_order_id), move the cursors (and the
        income cursor, `{"last_income_ms", "swept_at"}`, when the income history was swept), and
        read the account's fills since `window_start`. Returns (fills newly stored, fills in
        the window). A fill's `position_side` (its leg: both/long/short) is stored with it; a
        window row has the key only when its leg is known (not for a fill stored before
        migration 0020): `core.exchange_snapshot.fills_frame` decides what an unknown leg is."""
        result = self.database.call("recon_save_and_read_fill_window", {
            "p_account": account, "p_run_id": run_id,
            "p_fills": [{"symbol": f["symbol"], "exchange_fill_id": f["exchange_fill_id"],
                         "exchange_order_id": f["exchange_order_id"],
                         "client_order_id": f["client_order_id"], "side": f["side"],
                         "qty": _text(f["qty"]), "price": _text(f["price"]),
                         "fee_usd": _text(f["fee_usd"]), "fee_asset": f["fee_asset"],
                         "fee_amount": _text(f["fee_amount"]),
                         "filled_at": _iso(f["filled_at"].to_pydatetime()),
                         "position_side": f.get("position_side")} for f in fills],
            "p_cursors": [{"symbol": symbol, "last_fill_id": c["last_fill_id"],
                           "last_fill_at": _iso(c["last_fill_at"]),
                           "activity_key": c["activity_key"], "read_at": _iso(c["read_at"])}
                          for symbol, c in cursors.items()],
            "p_learnt": dict(learnt),
            "p_window_start": _iso(window_start),
            "p_income_cursor": None if income_cursor is None else {
                "last_income_ms": income_cursor["last_income_ms"],
                "swept_at": _iso(income_cursor["swept_at"])}})
        rows = result["fills"]
        for r in rows:
            for column in ("qty", "price", "fee_usd", "fee_amount"):
                if r[column] is not None:
                    r[column] = float(r[column])
            r["filled_at"] = datetime.fromisoformat(r["filled_at"])
        return int(result["inserted"]), rows
