"""The columns of every snapshot, the contract between the assets that fetch and the logic that
decides. Quantities are unsigned with a side; symbols are ccxt unified symbols
("BTC/USDT:USDT") on both sides; timestamps are timezone-aware UTC; money is USD.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

EXCHANGE_OPEN_ORDERS = (
    "account", "symbol", "exchange_order_id", "client_order_id", "side", "order_type", "status",
    "qty", "filled_qty", "price", "notional_usd", "created_at", "fetched_at",
)
# One row per symbol that matters to the account (open slices, open orders, recent activity),
# qty 0 when the exchange holds no position, with the market's minimum quantity step so that
# "effectively zero" can be decided without another request.
EXCHANGE_POSITIONS = (
    "account", "symbol", "side", "qty", "entry_price", "mark_price", "notional_usd",
    "min_qty_step", "fetched_at",
)
EXCHANGE_FILLS = (
    "account", "symbol", "exchange_fill_id", "exchange_order_id", "client_order_id", "side",
    "qty", "price", "fee_usd", "notional_usd", "filled_at", "fetched_at",
)
DB_PROFILES = (
    "profile_id", "exchange_account", "sub_tag", "allocated_capital_usd", "trading_state",
    "pause_source", "paused_at", "last_auto_resume_at",
)
DB_ORDERS = (
    "profile_id", "exchange_account", "trade_id", "intent", "symbol", "side", "client_order_id",
    "exchange_order_id", "status", "qty", "filled_qty", "price", "created_at", "updated_at",
)
DB_POSITIONS = (
    "profile_id", "exchange_account", "symbol", "side", "qty", "avg_price", "updated_at",
)
DB_TRADE_SLICES = (
    "profile_id", "exchange_account", "trade_id", "slice_no", "symbol", "side", "entry_qty",
    "exit_qty", "virtual_open_qty", "entry_price", "opened_at", "status", "updated_at",
)


class SnapshotShapeError(ValueError):
    """A snapshot frame does not have the columns the logic relies on."""


def require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> pd.DataFrame:
    """Return `frame` restricted to `columns` in order, or fail naming what is missing."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SnapshotShapeError(f"{name} is missing column(s): {', '.join(missing)}")
    return frame.loc[:, list(columns)]


def empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
