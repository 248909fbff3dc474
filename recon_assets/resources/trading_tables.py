"""Reads of the trading app's tables (`profiles`, `orders`) that the Dagster definitions make
outside the account snapshot. The trading tables are changed only by the lifecycle-safe SQL
functions of db/functions, never here. Each lookup is one SQL function of db/functions called
through the store's `call`, so it works alike over psycopg and the Supabase Data API."""

from __future__ import annotations

from recon_assets.resources.database import TradingStore


class TradingTables:
    """Read-only lookups in public.profiles and public.orders."""

    def __init__(self, database: TradingStore):
        self.database = database

    def exchange_accounts(self) -> set[str]:
        """Every exchange account a profile names (the partitions of the cycle)."""
        return set(self.database.call("recon_exchange_accounts"))

    def profile_ids(self) -> set[str]:
        """Every profile (the partitions of the correction job)."""
        return set(self.database.call("recon_profile_ids"))

    def profile(self, profile_id: str) -> dict | None:
        rows = self.database.call("recon_profile", {"p_profile_id": profile_id})
        return rows[0] if rows else None

    def known_order_ids(self, ids: list[str]) -> set[str]:
        """Which of `ids` (client or exchange order ids) an order of the database carries: looked
        up by those ids only, not by reading the whole, ever-growing orders table."""
        rows = self.database.call("recon_known_order_ids", {"p_ids": list(ids)})
        return {str(v) for r in rows for v in r.values() if v is not None}
