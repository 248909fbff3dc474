"""The store of `recon.exchange_fills` and `recon.exchange_fill_cursors` (migration 0004): the
exchange fills read so far, and where reading stopped per account and symbol; and
`recon.exchange_income_cursors` (migration 0014): where each account's income sweep stopped."""

from __future__ import annotations

from datetime import datetime

from recon_assets.core.exchange_snapshot import Cursor
from recon_assets.resources.database import PostgresStore


class FillStore:
    """Reads and writes the fills the exchange snapshot has read, and the fill cursors."""

    def __init__(self, database: PostgresStore):
        self.database = database

    def cursors(self, account: str) -> dict[str, Cursor]:
        """Where the last fill read of each symbol of `account` stopped."""
        with self.database.connect() as conn:
            rows = conn.execute(
                "SELECT symbol, last_fill_id, activity_key, "
                "       (extract(epoch FROM read_at) * 1000)::bigint AS read_at_ms "
                "FROM recon.exchange_fill_cursors WHERE exchange_account = %s", (account,)).fetchall()
        return {r["symbol"]: Cursor(r["last_fill_id"], r["activity_key"], r["read_at_ms"]) for r in rows}

    def income_cursor(self, account: str) -> tuple[int, int] | None:
        """(last income time read, when the sweep ran), both ms, or None before the first."""
        with self.database.connect() as conn:
            row = conn.execute(
                "SELECT last_income_ms, (extract(epoch FROM swept_at) * 1000)::bigint AS swept_ms "
                "FROM recon.exchange_income_cursors WHERE exchange_account = %s", (account,)).fetchone()
        return (row["last_income_ms"], row["swept_ms"]) if row else None

    def known_client_ids(self, account: str, order_ids: list[str]) -> dict[str, str]:
        """client_order_ids already resolved for these exchange order ids in earlier cycles."""
        if not order_ids:
            return {}
        with self.database.connect() as conn:
            rows = conn.execute(
                "SELECT DISTINCT exchange_order_id, client_order_id FROM recon.exchange_fills "
                "WHERE exchange_account = %s AND exchange_order_id = ANY(%s) AND client_order_id IS NOT NULL",
                (account, order_ids)).fetchall()
        return {r["exchange_order_id"]: r["client_order_id"] for r in rows}


    def unresolved_orders(self, account: str, since: datetime) -> list[tuple[str, str]]:
        """(exchange order id, symbol) of stored fills since `since` whose client_order_id is unknown."""
        with self.database.connect() as conn:
            rows = conn.execute(
                "SELECT exchange_order_id, min(symbol) AS symbol FROM recon.exchange_fills "
                "WHERE exchange_account = %s AND filled_at >= %s AND client_order_id IS NULL "
                "GROUP BY exchange_order_id ORDER BY exchange_order_id", (account, since)).fetchall()
        return [(r["exchange_order_id"], r["symbol"]) for r in rows]


    def save_and_read_window(self, account: str, run_id: str, fills: list[dict],
                                cursors: dict[str, dict], learnt: dict[str, str],
                                window_start: datetime, income_cursor: dict | None = None
                                ) -> tuple[int, list[dict]]:
        """In one transaction: store the new fills (once each), fill in the client_order_ids learnt
        this cycle (`learnt`: exchange order id -> client_order_id), move the cursors (and the
        income cursor, `{"last_income_ms", "swept_at"}`, when the income history was swept), and
        read the account's fills since `window_start`. Returns (fills newly stored, fills in
        the window)."""
        with self.database.connect() as conn:
            with conn.transaction():
                inserted = 0
                for f in fills:
                    cur = conn.execute(
                        """INSERT INTO recon.exchange_fills
                               (exchange_account, symbol, exchange_fill_id, exchange_order_id,
                                client_order_id, side, qty, price, fee_usd, fee_asset,
                                fee_amount, filled_at, first_seen_run_id)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                           ON CONFLICT (exchange_account, symbol, exchange_fill_id) DO UPDATE
                           SET client_order_id = COALESCE(recon.exchange_fills.client_order_id,
                                                          EXCLUDED.client_order_id),
                               -- a fee whose price was unknown when first read, priced later
                               fee_usd = COALESCE(recon.exchange_fills.fee_usd, EXCLUDED.fee_usd)
                           RETURNING (xmax = 0) AS inserted""",
                        (account, f["symbol"], f["exchange_fill_id"], f["exchange_order_id"],
                         f["client_order_id"], f["side"], f["qty"], f["price"], f["fee_usd"],
                         f["fee_asset"], f["fee_amount"],
                         f["filled_at"].to_pydatetime(), run_id))
                    inserted += bool(cur.fetchone()["inserted"])
                for symbol, c in cursors.items():
                    conn.execute(
                        """INSERT INTO recon.exchange_fill_cursors
                               (exchange_account, symbol, last_fill_id, last_fill_at, activity_key, read_at, run_id)
                           VALUES (%s, %s, %s, %s, %s, %s, %s)
                           ON CONFLICT (exchange_account, symbol) DO UPDATE SET
                               last_fill_id = GREATEST(recon.exchange_fill_cursors.last_fill_id,
                                                       EXCLUDED.last_fill_id),
                               last_fill_at = COALESCE(EXCLUDED.last_fill_at,
                                                       recon.exchange_fill_cursors.last_fill_at),
                               activity_key = EXCLUDED.activity_key,
                               read_at = EXCLUDED.read_at, run_id = EXCLUDED.run_id""",
                        (account, symbol, c["last_fill_id"], c["last_fill_at"], c["activity_key"],
                         c["read_at"], run_id))
                if income_cursor is not None:
                    conn.execute(
                        """INSERT INTO recon.exchange_income_cursors
                               (exchange_account, last_income_ms, swept_at, run_id)
                           VALUES (%s, %s, %s, %s)
                           ON CONFLICT (exchange_account) DO UPDATE SET
                               last_income_ms = GREATEST(recon.exchange_income_cursors.last_income_ms,
                                                         EXCLUDED.last_income_ms),
                               swept_at = EXCLUDED.swept_at, run_id = EXCLUDED.run_id""",
                        (account, income_cursor["last_income_ms"], income_cursor["swept_at"], run_id))
                # Fills whose order was unknown before: the order ids learnt this cycle resolve them.
                for order_id, client_id in learnt.items():
                    conn.execute(
                        "UPDATE recon.exchange_fills SET client_order_id = %s WHERE exchange_account = %s "
                        "AND exchange_order_id = %s AND client_order_id IS NULL", (client_id, account, order_id))
                rows = conn.execute(
                    """SELECT exchange_account, symbol, exchange_fill_id, exchange_order_id,
                              client_order_id, side, qty::float8 AS qty, price::float8 AS price,
                              fee_usd::float8 AS fee_usd, fee_asset,
                              fee_amount::float8 AS fee_amount, filled_at
                       FROM recon.exchange_fills
                       WHERE exchange_account = %s AND filled_at >= %s
                       ORDER BY filled_at, symbol, exchange_fill_id""",
                    (account, window_start)).fetchall()
        return inserted, rows
