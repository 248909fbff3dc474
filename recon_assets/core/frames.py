"""The columns of every snapshot, the contract between the assets that fetch and the logic that
decides. Quantities are unsigned with a side; symbols are ccxt unified symbols
("BTC/USDT:USDT") on both sides; timestamps are timezone-aware UTC; money is USD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from recon_assets.core.rules import ONE_WAY, POSITION_SIDES

EXCHANGE_OPEN_ORDERS = (
    "account", "symbol", "exchange_order_id", "client_order_id", "side", "order_type", "status",
    "qty", "filled_qty", "price", "notional_usd", "created_at", "fetched_at",
)
# One row per symbol that matters to the account (open slices, open orders, recent activity),
# side "flat" and qty 0 when the exchange holds no position, with the market's minimum quantity step so that
# "effectively zero" can be decided without another request. position_side says which position
# the row is (core.rules.POSITION_LEGS): "both" in one-way mode; in hedge mode one row per leg
# ("long", "short") of each symbol.
EXCHANGE_POSITIONS = (
    "account", "symbol", "side", "qty", "entry_price", "mark_price", "notional_usd",
    "min_qty_step", "fetched_at", "position_side",
)
# position_side says which position the fill traded (core.rules.POSITION_LEGS, Binance's
# positionSide): "both" in one-way mode; in hedge mode the leg, so a sell on "short" opened (or
# added to) a short and only a sell on "long" or a buy on "short" closes. None on a hedge-mode
# account for a fill stored before fills kept their leg (see `with_fill_legs`).
EXCHANGE_FILLS = (
    "account", "symbol", "exchange_fill_id", "exchange_order_id", "client_order_id", "side",
    "qty", "price", "fee_usd", "fee_asset", "fee_amount", "notional_usd", "filled_at",
    "fetched_at", "position_side",
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
    "order_client_ids",  # the client order ids of the trade's orders (a list): its attribution
)


class SnapshotShapeError(ValueError):
    """A snapshot frame does not have the columns the logic relies on."""


def require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> pd.DataFrame:
    """Return `frame` restricted to `columns` in order, or fail naming what is missing."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SnapshotShapeError(f"{name} is missing column(s): {', '.join(missing)}")
    return frame.loc[:, list(columns)]


def with_position_legs(positions: pd.DataFrame) -> pd.DataFrame:
    """Exchange positions with `position_side` filled in: a frame without it (written before
    hedge mode was supported, or built by hand) is one-way."""
    if "position_side" not in positions.columns:
        return positions.assign(position_side=ONE_WAY)
    return positions.assign(position_side=positions["position_side"].fillna(ONE_WAY))


def with_fill_legs(fills: pd.DataFrame, hedged: bool = False) -> pd.DataFrame:
    """Exchange fills with `position_side` filled in where it is unknown: a frame without the
    column (written before fills kept their leg, or built by hand) or a row without a value
    (recon.exchange_fills.position_side is null for fills stored before migration 0020). On a
    one-way account such a fill is on "both". On a hedge-mode account (`hedged`, see
    `is_hedged`) its leg cannot be told from its side (a sell may close a long or open a short),
    so it stays None: no evidence of which leg the fill traded, never a guess. Known legs are
    kept as they are. Returns a new frame."""
    unknown = None if hedged else ONE_WAY
    if "position_side" not in fills.columns:
        return fills.assign(position_side=pd.Series([unknown] * len(fills), index=fills.index,
                                                     dtype="object"))
    legs = fills["position_side"].astype("object")
    return fills.assign(position_side=legs.where(legs.notna(), unknown))


def is_hedged(positions: pd.DataFrame) -> bool:
    """Whether these exchange positions are of a hedge-mode account (rows per leg)."""
    return "position_side" in positions.columns and bool(
        positions["position_side"].isin(POSITION_SIDES).any())


def leg_of(hedged: bool, side: str) -> str:
    """The exchange position a slice or DB position of `side` is held in."""
    return side if hedged else ONE_WAY


def empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


# Which columns of the database snapshot hold numbers and times (the rest are text).
_NUMERIC = {"allocated_capital_usd", "qty", "filled_qty", "price", "avg_price", "entry_qty",
            "exit_qty", "virtual_open_qty", "entry_price", "slice_no"}
_TIMES = {"paused_at", "last_auto_resume_at", "created_at", "updated_at", "opened_at"}

DB_SNAPSHOT_PARTS = {
    "profiles": DB_PROFILES,
    "orders": DB_ORDERS,
    "positions": DB_POSITIONS,
    "trade_slices": DB_TRADE_SLICES,
}


def typed_frame(records: list[dict], columns: Sequence[str], name: str) -> pd.DataFrame:
    """A frame with exactly `columns`, numbers as float and times as UTC timestamps."""
    if not isinstance(records, list):
        raise SnapshotShapeError(f"{name}: expected a list of rows, got {type(records).__name__}")
    frame = pd.DataFrame.from_records(records, columns=list(columns)) if records else empty_frame(columns)
    for column in columns:
        if column in _NUMERIC:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
        elif column in _TIMES:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return frame


def db_snapshot_frames(snapshot: dict) -> tuple[pd.Timestamp, dict[str, pd.DataFrame]]:
    """Split the JSON of `recon_snapshot_account` into typed frames, plus the read time."""
    missing = [part for part in ("read_at", *DB_SNAPSHOT_PARTS) if part not in snapshot]
    if missing:
        raise SnapshotShapeError(f"database snapshot is missing: {', '.join(missing)}")
    read_at = pd.Timestamp(snapshot["read_at"]).tz_convert("UTC")
    frames = {part: typed_frame(snapshot[part], columns, f"db_{part}")
              for part, columns in DB_SNAPSHOT_PARTS.items()}
    return read_at, frames


def finite(value) -> float | None:
    """`value` as a float when it is a finite number, else None (missing, NaN, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def json_records(frame: pd.DataFrame) -> list[dict]:
    """The frame's rows as JSON-ready dicts for a SQL function's jsonb argument: NaN and NaT as
    null, timestamps as ISO text, numpy scalars as Python values."""
    def ready(value):
        if value is None or value is pd.NA or value is pd.NaT or (
                isinstance(value, float) and value != value):
            return None
        if isinstance(value, pd.Timestamp):
            return value.isoformat()
        return value.item() if hasattr(value, "item") else value

    return [{k: ready(v) for k, v in row.items()} for row in frame.to_dict("records")]
