"""Reads of the trading app's tables (`profiles`, `orders`) that the Dagster definitions make
outside the account snapshot. The trading tables are changed only by the lifecycle-safe SQL
functions of db/functions, never here."""

from __future__ import annotations

from recon_assets.resources.database import PostgresStore


class TradingTables:
    """Read-only lookups in public.profiles and public.orders."""

    def __init__(self, database: PostgresStore):
        self.database = database

    def exchange_accounts(self) -> set[str]:
        """Every exchange account a profile names (the partitions of the cycle)."""
        with self.database.connect() as conn:
            return {r["exchange_account"] for r in conn.execute(
                "SELECT DISTINCT exchange_account FROM profiles").fetchall()}

    def profile_ids(self) -> set[str]:
        """Every profile (the partitions of the correction job)."""
        with self.database.connect() as conn:
            return {r["id"] for r in conn.execute("SELECT id FROM profiles").fetchall()}

    def profile(self, profile_id: str) -> dict | None:
        with self.database.connect() as conn:
            return conn.execute("SELECT id, exchange_account FROM profiles WHERE id = %s",
                                (profile_id,)).fetchone()

    def known_order_ids(self, ids: list[str]) -> set[str]:
        """Which of `ids` (client or exchange order ids) an order of the database carries: looked
        up by those ids only, not by reading the whole, ever-growing orders table."""
        with self.database.connect() as conn:
            rows = conn.execute(
                "SELECT client_order_id, exchange_order_id FROM orders "
                "WHERE client_order_id = ANY(%s) OR exchange_order_id = ANY(%s)",
                (ids, ids)).fetchall()
        return {str(v) for r in rows for v in r.values() if v is not None}
