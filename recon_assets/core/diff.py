"""The reconciliation diff: what differs between the database snapshot and exchange truth.

`reconciliation_diff` is a pure function of the snapshot frames (columns in `core/frames.py`).
It returns one row per finding with `MISMATCH_COLUMNS`, ready to append to `recon.mismatches`.
No Dagster import here; the work runs in an in-process DuckDB reading the pandas frames in
place (no copy), in two stages:

1. over all orders, one full outer join on the client order id that carries only what decides
   (sides, open-or-not, quantities, prices) and keeps the row numbers of the pairs that differ
   at all and of the orders found on one side only: for a million orders this costs about one
   hash join, and the result is the size of the drift;
2. over those few rows (taken from the frames by row number) plus positions and slices: the
   exchange-id fallback, the tolerance tests, attribution, notional, details JSON, order.

Kinds (`core.rules.MISMATCH_KINDS`, exactly the CHECK of `recon.mismatches`):

- ``missing_from_exchange``: a DB order that is open (`new`, `open`, `partially_filled`) and
  matches no exchange open order. Notional = remaining qty x DB price.
- ``missing_in_db``: an exchange open order that matches no DB order at all (any status).
  `attributable` is true when its client_order_id parses (`core.attribution`) to the sub_tag of
  exactly one profile on that account; then `profile_id` and `trade_id` are filled. Otherwise it
  is foreign activity (`attributable` false, `profile_id` null); `details.attribution` says why
  (``foreign_id``, ``unknown_sub_tag``, ``ambiguous_sub_tag``).
- ``status_drift``: an exchange open order whose DB row is terminal (any status other than the
  three open ones). Notional = exchange remaining qty x price.
- ``qty_drift``: a matched open order whose qty, filled qty or side differs.
  Notional = max(|qty difference|, |filled difference|) x price (the whole qty when sides differ).
- ``price_drift``: a matched open order whose limit price differs. Notional = remaining qty x
  |price difference|. A price of 0 is read as "no price" (market orders), like null.
- ``position_drift``: per account and symbol (in hedge mode, per symbol and leg: the DB's long
  positions against the long leg, its short ones against the short leg;
  `details.position_side`), the DB net qty (sum over every DB position row of
  the account, long +, short -) differs from the exchange net position by at least the market's
  `min_qty_step` (by more than the tolerance when the step is unknown). `profile_id` is null and
  `attributable` false (an account-level finding); `db_qty`/`exchange_qty` are the SIGNED nets;
  `details.profiles` lists each profile's part. Notional = |difference| x (mark price, else
  exchange entry price, else DB average price). Exchange rows with side ``flat`` (qty 0) are
  a flat exchange (a flat leg in hedge mode).
- ``ghost_slice``: an open slice (`status` ``open``) with `virtual_open_qty > 0` on a leg (the
  symbol's net position; in hedge mode the leg of the slice's side) the exchange holds nothing
  on (|position| below `min_qty_step`) while the leg's open slices do not add up to that, on
  the side their sum points to (`core.book.judge_leg`, the rule the heartbeat and the backfill
  share: long and short slices that net to the exchange's flat are in sync; the diff judges
  without the evidence waiting to be booked, which the heartbeat subtracts). A leg the
  exchange snapshot has no row for is not judged. One row per slice, with its profile and trade;
  `attributable` = every order of its trade carries its profile's sub tag and the trade id in
  its client order id (`core.attribution.slice_attribution`; a profile having a sub tag proves
  nothing about a slice). Notional = virtual open qty x
  (exchange mark price, else the slice's entry price).

An order finding whose order has no price (a market order) is priced at the symbol's mark
price (`details.priced_at_mark`): unknown is never zero.

Matching: a DB order and an exchange open order match on (account, client_order_id); an exchange
order left unmatched falls back to (account, exchange_order_id) against a DB row that has that
exchange id and was itself not matched by client id (`details.matched_by` says which key).
Order quantities in the output are unsigned (sides in `details`).

Tolerances: two numbers differ when |a - b| > REL_TOL * max(|a|, |b|) + ABS_TOL (1e-9 relative,
1e-12 absolute), so float noise from numeric -> float conversion is never a finding; null vs a
value is a difference, null vs null is not. Position drift uses the market step instead.

Recency guard (safety rule 7): DB rows (orders, positions, slices) with `updated_at` after
`db_read_at - recency_guard_s`, and exchange orders with `created_at` after that same moment
(which includes everything created after `db_read_at`), make the findings that involve them
suppressed this cycle: they are re-checked next cycle. A position finding is suppressed when any
DB position row of that account and symbol is recent. The count of suppressed findings is in
``result.attrs["suppressed_recent"]`` (per kind in ``attrs["suppressed_recent_by_kind"]``), and
the profiles they concern (a position finding: every profile with a part in it) in
``attrs["not_fully_checked"]`` (profile -> why): their cycle was not fully checked, so it is not
clean for the watchdog's auto-resume streak.

New-order grace: a DB order placed (`created_at`) after `db_read_at - new_order_grace_s` that
the exchange does not list is not reported `missing_from_exchange` this cycle either: Binance's
open orders and order queries (-2013 Order does not exist) may lag its matching engine for a
moment after an order is placed, and such an order is neither lost nor to be cancelled. It is
held back like a recent row (counted in `suppressed_recent`, its profile not fully checked), and
the next cycle past the grace looks again.

Bad input fails loudly: a missing column raises `SnapshotShapeError` naming it; so do null or
unknown sides / null quantities in positions and slices, numbers that do not parse, and naive
timestamps. Rows are sorted by kind (in the order above), account, symbol, profile, client order
id, exchange order id, trade id and slice, so two runs over the same input compare exactly.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from recon_assets.core.attribution import parse_client_order_id, slice_attribution
from recon_assets.core.book import below_step_sql
from recon_assets.core.frames import (
    DB_ORDERS,
    DB_POSITIONS,
    DB_PROFILES,
    DB_TRADE_SLICES,
    EXCHANGE_OPEN_ORDERS,
    EXCHANGE_POSITIONS,
    SnapshotShapeError,
    require_columns,
    with_position_legs,
)
from recon_assets.core.rules import (FLAT, MISMATCH_KINDS, ONE_WAY, OPEN_ORDER_STATUSES,
                                     OPEN_SLICE_STATUS, POSITION_DRIFT, POSITION_LEGS,
                                     POSITION_SIDES, QTY_ABS_TOL, sql_list)

MISMATCH_COLUMNS = (
    "cycle_id", "kind", "profile_id", "exchange_account", "symbol", "client_order_id",
    "exchange_order_id", "trade_id", "attributable", "db_qty", "exchange_qty", "db_status",
    "exchange_status", "db_price", "exchange_price", "notional_usd", "details",
)
REL_TOL = 1e-9
ABS_TOL = QTY_ABS_TOL

_NUMBER_COLUMNS = ("db_qty", "exchange_qty", "db_price", "exchange_price", "notional_usd")


# --------------------------------------------------------------------------- input checks

def _numbers(frame: pd.DataFrame, name: str, columns: Sequence[str]) -> pd.DataFrame:
    """Coerce number columns that arrived as object (Decimal, str) to float64, or fail."""
    updates = {}
    for col in columns:
        series = frame[col]
        if pd.api.types.is_float_dtype(series.dtype):
            continue
        try:
            updates[col] = pd.to_numeric(series, errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            raise SnapshotShapeError(f"{name}.{col} holds values that are not numbers: {exc}") from exc
    return frame.assign(**updates) if updates else frame


def _times(frame: pd.DataFrame, name: str, col: str) -> pd.Series:
    """`col` as timezone-aware timestamps, or fail (naive, or values that are not timestamps)."""
    series = frame[col]
    if not isinstance(series.dtype, pd.DatetimeTZDtype):
        if pd.api.types.is_datetime64_dtype(series.dtype):
            raise SnapshotShapeError(f"{name}.{col} must be timezone-aware (UTC), not naive")
        try:
            series = pd.to_datetime(series, utc=True)
        except (TypeError, ValueError) as exc:
            raise SnapshotShapeError(f"{name}.{col} holds values that are not timestamps: {exc}") from exc
    return series


def _after(times: pd.Series, cutoff: pd.Timestamp) -> np.ndarray:
    """True where the timestamp is after `cutoff` (null timestamps are not recent)."""
    return (times > cutoff).fillna(False).to_numpy(dtype=bool)


def _recent(frame: pd.DataFrame, name: str, col: str, cutoff: pd.Timestamp) -> np.ndarray:
    """True where `col` is after `cutoff` (null timestamps are not recent)."""
    return _after(_times(frame, name, col), cutoff)


def _take(series: pd.Series, pos: np.ndarray) -> pd.Series:
    """The values of `series` at the (sorted, unique) positions `pos`, same dtype.

    Arrow-backed columns are taken chunk by chunk: Arrow's take over a chunked array costs
    several times more than over each chunk (a few ms per text column of a million rows)."""
    dtype = series.dtype
    if not (isinstance(dtype, pd.ArrowDtype)
            or (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow")):
        return series.iloc[pos].reset_index(drop=True)
    chunked = series.array.__arrow_array__()
    parts, lo, offset = [], 0, 0
    for chunk, hi in zip(chunked.chunks,
                         np.searchsorted(pos, np.cumsum([len(c) for c in chunked.chunks]))):
        if hi > lo:
            parts.append(chunk.take(pa.array(pos[lo:hi] - offset)))
        lo, offset = hi, offset + len(chunk)
    return pd.Series(pa.chunked_array(parts, type=chunked.type), dtype=dtype)


def _with_row(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`columns` of `frame` (not copied) plus `_row`, the row number (cheaper than `assign`,
    which copies the number columns of a million-row frame)."""
    out = {col: frame[col].array for col in columns}
    out["_row"] = np.arange(len(frame), dtype=np.int64)
    return pd.DataFrame(out, copy=False)


def _rows(frame: pd.DataFrame, columns: Sequence[str], pos: np.ndarray) -> pd.DataFrame:
    """The rows of `frame` at the positions `pos`, only `columns`, with `_row` = the position."""
    out = {"_row": pd.Series(pos, dtype=np.int64)}
    out.update((col, _take(frame[col], pos)) for col in columns)
    return pd.DataFrame(out)


def _require_sides(frame: pd.DataFrame, name: str, allowed: Sequence[str]) -> None:
    bad = frame["side"].isna() | ~frame["side"].isin(list(allowed))
    if bad.any():
        sample = frame.loc[bad, "side"].head(3).tolist()
        raise SnapshotShapeError(f"{name}.side must be one of {', '.join(allowed)}; found {sample!r}")


def _require_present(frame: pd.DataFrame, name: str, col: str) -> None:
    if frame[col].isna().any():
        raise SnapshotShapeError(f"{name}.{col} has null value(s); a partial snapshot is not zero")


# --------------------------------------------------------------------------- SQL

def _differs(a: str, b: str) -> str:
    """SQL: the two numbers differ beyond the tolerance (null vs value differs, null vs null not)."""
    return (f"coalesce(abs({a} - {b}) > {REL_TOL!r} * greatest(abs({a}), abs({b})) + {ABS_TOL!r}, "
            f"({a} IS NULL) <> ({b} IS NULL))")


def _iso(col: str) -> str:
    return f"strftime({col}, '%Y-%m-%dT%H:%M:%S.%fZ')"


_OPEN_SQL = sql_list(OPEN_ORDER_STATUSES)
_SIDE_DIFFERS = "d_side IS DISTINCT FROM e_side"
_QTY_DRIFT = (f"({_SIDE_DIFFERS} OR {_differs('d_qty', 'e_qty')} "
              f"OR {_differs('d_filled', 'e_filled')})")
_PRICE_DRIFT = _differs("d_price", "e_price")
_D_NUMS = """CAST(qty AS DOUBLE) AS d_qty,
           coalesce(CAST(filled_qty AS DOUBLE), 0.0) AS d_filled,
           nullif(CAST(price AS DOUBLE), 0.0) AS d_price"""
_E_NUMS = """CAST(qty AS DOUBLE) AS e_qty,
           coalesce(CAST(filled_qty AS DOUBLE), 0.0) AS e_filled,
           nullif(CAST(price AS DOUBLE), 0.0) AS e_price"""

# Stage 1, over every order: one full outer join on (account, client_order_id) that carries
# only what decides, and keeps the rows that differ at all (exact tests; the tolerance is
# applied to those few in stage 2): orders on one side only (DB side: open rows, and rows with
# an exchange id, which may still match on it) and matched pairs that are not identical.
_MATCH_SQL = f"""
WITH d AS (
    SELECT _row AS d_row,
           CAST(exchange_account AS VARCHAR) AS d_account,
           CAST(client_order_id AS VARCHAR) AS d_coid,
           exchange_order_id IS NOT NULL AS d_has_eoid,
           CAST(side AS VARCHAR) AS d_side,
           coalesce(CAST(status AS VARCHAR) IN ({_OPEN_SQL}), false) AS d_open,
           {_D_NUMS}
    FROM db_orders
),
e AS (
    SELECT _row AS e_row,
           CAST(account AS VARCHAR) AS e_account,
           CAST(client_order_id AS VARCHAR) AS e_coid,
           CAST(side AS VARCHAR) AS e_side,
           {_E_NUMS}
    FROM exchange_open_orders
)
SELECT d_row, e_row
-- Hashed on the client id alone, the account checked on each hit (same result as the two-key
-- equality, a third less work: hashing two strings per row is most of the join's cost).
FROM d FULL OUTER JOIN e ON d_coid = e_coid AND d_account >= e_account AND d_account <= e_account
WHERE d_row IS NULL
   OR (e_row IS NULL AND (d_open OR d_has_eoid))
   OR (e_row IS NOT NULL AND (NOT d_open OR d_side IS DISTINCT FROM e_side
       OR d_qty IS DISTINCT FROM e_qty OR d_filled IS DISTINCT FROM e_filled
       OR d_price IS DISTINCT FROM e_price))
"""

# The columns stage 1 reads.
_D_MATCH_COLUMNS = ("exchange_account", "client_order_id", "exchange_order_id", "side", "status",
                    "qty", "filled_qty", "price")
_E_MATCH_COLUMNS = ("account", "client_order_id", "side", "qty", "filled_qty", "price")
_D_ROW_COLUMNS = ("profile_id", "exchange_account", "trade_id", "intent",
                  "symbol", "side", "client_order_id", "exchange_order_id", "status", "qty",
                  "filled_qty", "price")
_E_ROW_COLUMNS = ("account", "symbol", "exchange_order_id", "client_order_id",
                  "side", "order_type", "status", "qty", "filled_qty", "price", "notional_usd")

# Stage 2, over the few candidate rows: every order finding, its columns, notional and details
# JSON, suppression flag, in the final order.
_ORDER_FINDINGS_SQL = f"""
WITH d AS (
    SELECT _row AS d_row, _recent AS d_recent, _new AS d_new,
           CAST(profile_id AS VARCHAR) AS d_profile_id,
           CAST(exchange_account AS VARCHAR) AS d_account,
           CAST(trade_id AS VARCHAR) AS d_trade_id,
           CAST(intent AS VARCHAR) AS d_intent,
           CAST(symbol AS VARCHAR) AS d_symbol,
           CAST(side AS VARCHAR) AS d_side,
           CAST(client_order_id AS VARCHAR) AS d_coid,
           CAST(exchange_order_id AS VARCHAR) AS d_eoid,
           CAST(status AS VARCHAR) AS d_status,
           coalesce(CAST(status AS VARCHAR) IN ({_OPEN_SQL}), false) AS d_open,
           {_D_NUMS}
    FROM d_rows
),
e AS (
    SELECT _row AS e_row, _recent AS e_recent,
           CAST(account AS VARCHAR) AS e_account,
           CAST(symbol AS VARCHAR) AS e_symbol,
           CAST(exchange_order_id AS VARCHAR) AS e_eoid,
           CAST(client_order_id AS VARCHAR) AS e_coid,
           CAST(side AS VARCHAR) AS e_side,
           CAST(order_type AS VARCHAR) AS e_order_type,
           CAST(status AS VARCHAR) AS e_status,
           {_E_NUMS},
           CAST(notional_usd AS DOUBLE) AS e_notional,
           created_at AS e_created_at
    FROM e_rows
),
j AS MATERIALIZED (
    SELECT m.*, d.*, e.*, coalesce(md.mark, me.mark) AS mark
    FROM matches m LEFT JOIN d USING (d_row) LEFT JOIN e USING (e_row)
    LEFT JOIN marks md ON md.account = d.d_account AND md.symbol = d.d_symbol
    LEFT JOIN marks me ON me.account = e.e_account AND me.symbol = e.e_symbol
),
-- Fallback on the exchange order id for what the client id left unmatched on both sides.
d_only AS (SELECT * FROM j WHERE e_row IS NULL),
e_only AS (SELECT * FROM j WHERE d_row IS NULL),
fb AS MATERIALIZED (
    SELECT d_only.d_row, e_only.e_row
    FROM d_only JOIN e_only ON d_only.d_account = e_only.e_account
                           AND d_only.d_eoid = e_only.e_eoid
),
pairs AS MATERIALIZED (
    SELECT j.*, 'client_order_id' AS matched_by FROM j
    WHERE d_row IS NOT NULL AND e_row IS NOT NULL
    UNION ALL BY NAME
    SELECT d.*, e.*, mk.mark, 'exchange_order_id' AS matched_by
    FROM fb JOIN d USING (d_row) JOIN e USING (e_row)
    LEFT JOIN marks mk ON mk.account = d.d_account AND mk.symbol = d.d_symbol
),
orders AS (
    SELECT 'missing_from_exchange' AS kind, d_profile_id AS profile_id, d_account AS account,
           d_symbol AS symbol, d_coid AS client_order_id, d_eoid AS exchange_order_id,
           d_trade_id AS trade_id, true AS attributable,
           d_qty AS db_qty, CAST(NULL AS DOUBLE) AS exchange_qty,
           d_status AS db_status, CAST(NULL AS VARCHAR) AS exchange_status,
           d_price AS db_price, CAST(NULL AS DOUBLE) AS exchange_price,
           greatest(d_qty - d_filled, 0.0) * coalesce(d_price, mark) AS notional_usd,
           d_recent OR d_new AS suppressed, CAST(NULL AS BIGINT) AS slice_no,
           json_object('side', d_side, 'intent', d_intent, 'filled_qty', d_filled,
                       'remaining_qty', greatest(d_qty - d_filled, 0.0),
                       'price_known', d_price IS NOT NULL,
                       'priced_at_mark', d_price IS NULL AND mark IS NOT NULL) AS details
    FROM d_only
    WHERE d_open AND d_row NOT IN (SELECT d_row FROM fb)
    UNION ALL
    SELECT 'missing_in_db', a_profile_id, e_account, e_symbol, e_coid, e_eoid, a_trade_id,
           a_profile_id IS NOT NULL, NULL, e_qty, NULL, e_status, NULL, e_price,
           coalesce(greatest(e_qty - e_filled, 0.0) * e_price, e_notional,
                    greatest(e_qty - e_filled, 0.0) * mark),
           e_recent, NULL,
           json_object('side', e_side, 'order_type', e_order_type, 'filled_qty', e_filled,
                       'remaining_qty', greatest(e_qty - e_filled, 0.0),
                       'created_at', {_iso('e_created_at')}, 'attribution', a_attribution,
                       'sub_tag', a_sub_tag, 'intent', a_intent)
    FROM e_only LEFT JOIN attributions ON a_row = e_row
    WHERE e_row NOT IN (SELECT e_row FROM fb)
    UNION ALL
    SELECT kind, d_profile_id, d_account, d_symbol, d_coid, coalesce(e_eoid, d_eoid),
           d_trade_id, true, d_qty, e_qty, d_status, e_status, d_price, e_price,
           CASE kind
             WHEN 'status_drift' THEN
               coalesce(greatest(e_qty - e_filled, 0.0) * coalesce(e_price, d_price), e_notional,
                        greatest(e_qty - e_filled, 0.0) * mark)
             WHEN 'qty_drift' THEN
               CASE WHEN {_SIDE_DIFFERS} THEN greatest(d_qty, e_qty)
                    ELSE greatest(abs(d_qty - e_qty), abs(d_filled - e_filled)) END
               * coalesce(e_price, d_price, mark)
             ELSE greatest(e_qty - e_filled, 0.0) * abs(d_price - e_price)
           END,
           d_recent OR e_recent, NULL,
           json_object('matched_by', matched_by, 'intent', d_intent,
                       'order_type', e_order_type, 'db_side', d_side, 'exchange_side', e_side,
                       'db_filled_qty', d_filled, 'exchange_filled_qty', e_filled,
                       'exchange_client_order_id', e_coid, 'db_exchange_order_id', d_eoid,
                       'drift', CASE WHEN kind = 'qty_drift' THEN list_concat(
                           CASE WHEN {_SIDE_DIFFERS} THEN ['side'] ELSE [] END,
                           CASE WHEN {_differs('d_qty', 'e_qty')} THEN ['qty'] ELSE [] END,
                           CASE WHEN {_differs('d_filled', 'e_filled')} THEN ['filled_qty']
                                ELSE [] END) END)
    FROM (
        SELECT 'status_drift' AS kind, * FROM pairs WHERE NOT d_open
        UNION ALL SELECT 'qty_drift', * FROM pairs WHERE d_open AND {_QTY_DRIFT}
        UNION ALL SELECT 'price_drift', * FROM pairs WHERE d_open AND {_PRICE_DRIFT}
    )
)
SELECT kind, profile_id, account AS exchange_account, symbol, client_order_id,
       exchange_order_id, trade_id, attributable, db_qty, exchange_qty, db_status,
       exchange_status, db_price, exchange_price, abs(coalesce(notional_usd, 0.0)) AS notional_usd,
       details, suppressed
FROM orders
ORDER BY CASE kind {' '.join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(MISMATCH_KINDS))} END,
         exchange_account NULLS FIRST, symbol NULLS FIRST, profile_id NULLS FIRST,
         client_order_id NULLS FIRST, exchange_order_id NULLS FIRST, trade_id NULLS FIRST,
         slice_no NULLS FIRST
"""

# Stage 2 also, over positions and slices (run beside the orders' part: kinds sort first, and
# the order kinds come first, so the two results one after the other are in the final order).
_ACCOUNT_FINDINGS_SQL = f"""
-- Positions: a one-way account by its net position per symbol; a hedge-mode account (its
-- exchange rows are legs) per symbol and leg, so a long and a short leg cannot hide each
-- other's drift.
WITH hedged AS (
    SELECT DISTINCT CAST(account AS VARCHAR) AS account FROM exchange_positions
    WHERE position_side IN ('long', 'short')
),
ex_symbol AS (
    SELECT CAST(account AS VARCHAR) AS account, CAST(symbol AS VARCHAR) AS symbol,
           max(CASE WHEN min_qty_step > 0 THEN min_qty_step END) AS step,
           max(CASE WHEN mark_price > 0 THEN mark_price END) AS mark
    FROM exchange_positions GROUP BY ALL
),
ex AS (
    SELECT CAST(account AS VARCHAR) AS account, CAST(symbol AS VARCHAR) AS symbol,
           CAST(position_side AS VARCHAR) AS leg,
           sum(qty * CASE side WHEN 'long' THEN 1.0 WHEN 'short' THEN -1.0 ELSE 0.0 END)
             AS ex_net,
           sum(abs(qty)) AS ex_gross,
           sum(CASE WHEN entry_price > 0 THEN abs(qty) * entry_price END)
             / nullif(sum(CASE WHEN entry_price > 0 THEN abs(qty) END), 0) AS ex_entry
    FROM exchange_positions GROUP BY ALL
),
pos AS (
    SELECT CAST(d.exchange_account AS VARCHAR) AS account, CAST(d.symbol AS VARCHAR) AS symbol,
           CASE WHEN h.account IS NOT NULL THEN CAST(d.side AS VARCHAR) ELSE '{ONE_WAY}' END AS leg,
           CAST(d.profile_id AS VARCHAR) AS profile_id,
           d.qty * CASE d.side WHEN 'long' THEN 1.0 ELSE -1.0 END AS net, abs(d.qty) AS q,
           CASE WHEN d.avg_price > 0 THEN d.avg_price END AS avg_price, d._recent AS recent
    FROM db_positions d LEFT JOIN hedged h ON h.account = CAST(d.exchange_account AS VARCHAR)
),
parts AS (
    SELECT account, symbol, leg, profile_id, sum(net) AS net FROM pos GROUP BY ALL
),
db AS (
    SELECT account, symbol, leg, sum(net) AS db_net, bool_or(recent) AS recent,
           sum(q * avg_price) / nullif(sum(CASE WHEN avg_price IS NOT NULL THEN q END), 0)
             AS db_price
    FROM pos GROUP BY ALL
),
db_parts AS (
    SELECT account, symbol, leg,
           list({{'profile_id': profile_id, 'net_qty': net}} ORDER BY profile_id NULLS FIRST)
             AS parts
    FROM parts GROUP BY ALL
),
both_sides AS (
    SELECT account, symbol, leg, coalesce(db_net, 0.0) AS db_net,
           coalesce(ex_net, 0.0) AS ex_net, ex_gross, y.step, y.mark, ex_entry, db_price,
           coalesce(recent, false) AS recent,
           coalesce(db_net, 0.0) - coalesce(ex_net, 0.0) AS diff
    FROM db FULL OUTER JOIN ex USING (account, symbol, leg)
    LEFT JOIN ex_symbol y USING (account, symbol)
),
positions AS (
    SELECT 'position_drift' AS kind, CAST(NULL AS VARCHAR) AS profile_id, b.account, b.symbol,
           NULL AS client_order_id, NULL AS exchange_order_id, NULL AS trade_id,
           false AS attributable, db_net, ex_net, NULL AS db_status, NULL AS exchange_status,
           db_price, ex_entry, abs(diff) * coalesce(mark, ex_entry, db_price, 0.0),
           recent, NULL AS slice_no,
           json_object('profiles', coalesce(p.parts, []), 'difference', diff,
                       'min_qty_step', step, 'exchange_row', ex_gross IS NOT NULL,
                       'exchange_gross_qty', coalesce(ex_gross, 0.0), 'position_side', b.leg)
    FROM both_sides b LEFT JOIN db_parts p USING (account, symbol, leg)
    WHERE CASE WHEN step IS NOT NULL THEN NOT {below_step_sql('diff', 'step')}
               ELSE {_differs('db_net', 'ex_net')} END
),
-- The open slices' signed sum per leg: the book a ghost is judged on (core.book).
book AS (
    SELECT CAST(s.exchange_account AS VARCHAR) AS account, CAST(s.symbol AS VARCHAR) AS symbol,
           CASE WHEN h.account IS NOT NULL THEN CAST(s.side AS VARCHAR) ELSE '{ONE_WAY}' END
             AS leg,
           sum(CASE s.side WHEN 'long' THEN 1.0 ELSE -1.0 END
               * CAST(s.virtual_open_qty AS DOUBLE)) AS claimed
    FROM db_trade_slices s LEFT JOIN hedged h ON h.account = CAST(s.exchange_account AS VARCHAR)
    WHERE s.status = '{OPEN_SLICE_STATUS}' AND s.virtual_open_qty > 0
    GROUP BY ALL
),
-- Ghost slices (core.book.judge_leg): open with virtual open qty on a leg the exchange holds
-- nothing on, while the leg's open slices do not add up to it (a book that nets is in sync).
ghosts AS (
    SELECT 'ghost_slice' AS kind, s.profile_id, s.account, s.symbol, NULL, NULL, s.trade_id,
           s.attributed, s.virtual_open_qty, coalesce(x.ex_gross, 0.0),
           s.status, NULL, s.entry_price, y.mark,
           s.virtual_open_qty * coalesce(y.mark, s.entry_price, 0.0),
           s.recent, s.slice_no,
           json_object('slice_no', s.slice_no, 'side', s.side, 'entry_qty', s.entry_qty,
                       'exit_qty', s.exit_qty, 'min_qty_step', y.step,
                       'exchange_row', x.ex_gross IS NOT NULL,
                       'price_source', CASE WHEN y.mark IS NOT NULL THEN 'mark_price'
                                            WHEN s.entry_price IS NOT NULL THEN 'entry_price'
                                       END)
    FROM (
        SELECT CAST(profile_id AS VARCHAR) AS profile_id,
               CAST(exchange_account AS VARCHAR) AS account, CAST(symbol AS VARCHAR) AS symbol,
               CAST(trade_id AS VARCHAR) AS trade_id, CAST(slice_no AS BIGINT) AS slice_no,
               CAST(side AS VARCHAR) AS side, CAST(status AS VARCHAR) AS status,
               CAST(virtual_open_qty AS DOUBLE) AS virtual_open_qty,
               CAST(entry_qty AS DOUBLE) AS entry_qty, CAST(exit_qty AS DOUBLE) AS exit_qty,
               CASE WHEN entry_price > 0 THEN CAST(entry_price AS DOUBLE) END AS entry_price,
               _recent AS recent, _attributed AS attributed
        FROM db_trade_slices
        WHERE status = '{OPEN_SLICE_STATUS}' AND virtual_open_qty > 0
    ) s
    LEFT JOIN hedged h USING (account)
    JOIN ex x ON x.account = s.account AND x.symbol = s.symbol
             AND x.leg = CASE WHEN h.account IS NOT NULL THEN s.side ELSE '{ONE_WAY}' END
    JOIN book b ON b.account = x.account AND b.symbol = x.symbol AND b.leg = x.leg
    LEFT JOIN ex_symbol y ON y.account = s.account AND y.symbol = s.symbol
    WHERE {below_step_sql('x.ex_net', 'y.step')}
      AND NOT {below_step_sql('b.claimed - x.ex_net', 'y.step')}
      -- the side the claim points to (a slice of the other side may be what the flat netted)
      AND (b.claimed - x.ex_net) * CASE s.side WHEN 'long' THEN 1.0 ELSE -1.0 END > 0
),
found(kind, profile_id, account, symbol, client_order_id, exchange_order_id, trade_id, attributable, db_qty, exchange_qty, db_status, exchange_status, db_price, exchange_price, notional_usd, suppressed, slice_no, details) AS (
    SELECT * FROM positions
    UNION ALL SELECT * FROM ghosts
)
SELECT kind, profile_id, account AS exchange_account, symbol, client_order_id,
       exchange_order_id, trade_id, attributable, db_qty, exchange_qty, db_status,
       exchange_status, db_price, exchange_price, abs(coalesce(notional_usd, 0.0)) AS notional_usd,
       details, suppressed
FROM found
ORDER BY CASE kind {' '.join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(MISMATCH_KINDS))} END,
         exchange_account NULLS FIRST, symbol NULLS FIRST, profile_id NULLS FIRST,
         client_order_id NULLS FIRST, exchange_order_id NULLS FIRST, trade_id NULLS FIRST,
         slice_no NULLS FIRST
"""


# --------------------------------------------------------------------------- helpers

def _slices_attributed(slices: pd.DataFrame, profiles: pd.DataFrame) -> np.ndarray:
    """Per slice: attributed to its profile by its own orders (`core.attribution`); computed for
    the open slices with virtual open qty (the only ones a finding can be about)."""
    tags = {(a, p): t for a, p, t in zip(profiles["exchange_account"].tolist(),
                                         profiles["profile_id"].tolist(),
                                         profiles["sub_tag"].tolist())}
    out = np.zeros(len(slices), dtype=bool)
    candidates = np.flatnonzero(((slices["status"] == OPEN_SLICE_STATUS)
                                 & (slices["virtual_open_qty"] > 0)).fillna(False).to_numpy())
    accounts, profile_ids = slices["exchange_account"].to_numpy(), slices["profile_id"].to_numpy()
    trades, ids = slices["trade_id"].to_numpy(), slices["order_client_ids"].to_numpy()
    for i in candidates:
        out[i] = slice_attribution(tags.get((accounts[i], profile_ids[i])), trades[i], ids[i])[0]
    return out


def _attributions(e_rows: pd.DataFrame, profiles: pd.DataFrame) -> pd.DataFrame:
    """Sub-tag attribution (`core.attribution`) of the given exchange orders (a few rows)."""
    tags: dict[tuple[str, str], set[str]] = {}
    for account, sub_tag, profile_id in zip(profiles["exchange_account"].tolist(),
                                            profiles["sub_tag"].tolist(),
                                            profiles["profile_id"].tolist()):
        if isinstance(sub_tag, str) and sub_tag:
            tags.setdefault((account, sub_tag), set()).add(profile_id)
    a_profile_id, a_trade_id, a_attribution, a_sub_tag, a_intent = [], [], [], [], []
    for account, coid in zip(e_rows["account"].tolist(), e_rows["client_order_id"].tolist()):
        parsed = parse_client_order_id(coid)
        if parsed is None:
            a_profile_id.append(None)
            a_trade_id.append(None)
            a_attribution.append("foreign_id")
            a_sub_tag.append(None)
            a_intent.append(None)
            continue
        owners = tags.get((account, parsed.sub_tag))
        if owners is not None and len(owners) == 1:
            a_profile_id.append(next(iter(owners)))
            a_trade_id.append(parsed.trade_id)
            a_attribution.append("sub_tag")
        else:
            a_profile_id.append(None)
            a_trade_id.append(None)
            a_attribution.append("ambiguous_sub_tag" if owners else "unknown_sub_tag")
        a_sub_tag.append(parsed.sub_tag)
        a_intent.append(parsed.intent)
    return pd.DataFrame({
        "a_row": pd.Series(e_rows["_row"].to_numpy(), dtype="int64"),
        "a_profile_id": pd.Series(a_profile_id, dtype=object),
        "a_trade_id": pd.Series(a_trade_id, dtype=object),
        "a_attribution": pd.Series(a_attribution, dtype=object),
        "a_sub_tag": pd.Series(a_sub_tag, dtype=object),
        "a_intent": pd.Series(a_intent, dtype=object),
    })


def _marks(positions: pd.DataFrame) -> pd.DataFrame:
    """(account, symbol, mark): the exchange's mark price per symbol, which prices an order the
    finding knows no price of (a market order)."""
    marks = positions.loc[positions["mark_price"] > 0, ["account", "symbol", "mark_price"]]
    out = (marks.groupby(["account", "symbol"], sort=False)["mark_price"].max().reset_index())
    return pd.DataFrame({"account": out["account"].astype(str).astype(object),
                         "symbol": out["symbol"].astype(str).astype(object),
                         "mark": out["mark_price"].astype("float64")})


_DATABASE: tuple[int, duckdb.DuckDBPyConnection] | None = None
_DATABASE_LOCK = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A fresh connection to a per-process in-memory DuckDB (opening one costs ~30 ms; a cursor
    costs nothing). Views registered on it are its own, so concurrent calls do not mix."""
    global _DATABASE
    with _DATABASE_LOCK:
        if _DATABASE is None or _DATABASE[0] != os.getpid():
            # Every result is ordered explicitly (ORDER BY, or np.unique on row numbers), so
            # DuckDB need not preserve insertion order, which lets its operators run freer.
            _DATABASE = (os.getpid(), duckdb.connect(
                ":memory:", config={"preserve_insertion_order": False}))
        return _DATABASE[1].cursor()


def _to_result(columns: dict[str, np.ndarray], keep: np.ndarray, cycle_id: str) -> pd.DataFrame:
    """Fetched columns (masked where null) -> the output frame of the rows `keep` selects:
    text as object with None, numbers float64."""
    out = {}
    n = int(keep.sum())
    for col in MISMATCH_COLUMNS:
        if col == "cycle_id":
            out[col] = pd.Series(np.full(n, cycle_id, dtype=object), dtype=object)
            continue
        values = columns[col]
        if col in _NUMBER_COLUMNS:
            out[col] = pd.Series(np.ma.filled(values.astype("float64"), np.nan)[keep])
        elif col == "attributable":
            out[col] = pd.Series(np.ma.filled(values, False).astype(bool)[keep])
        else:
            text = np.ma.getdata(values).astype(object)
            text[np.ma.getmaskarray(values)] = None
            out[col] = pd.Series(text[keep], dtype=object)
    return pd.DataFrame(out, columns=list(MISMATCH_COLUMNS))


def _not_fully_checked(table: dict[str, np.ndarray], suppressed: np.ndarray) -> dict[str, str]:
    """Profile -> why, for the profiles a finding held back by the recency guard concerns (its
    profile; for a position finding, every profile with a part in it): their cycle was not fully
    checked, so it is not clean (core.watchdog)."""
    out: dict[str, list[str]] = {}
    for i in np.flatnonzero(suppressed):
        kind = str(np.ma.getdata(table["kind"])[i])
        symbol = table["symbol"][i]
        profiles = []
        if not np.ma.getmaskarray(table["profile_id"])[i]:
            profiles.append(str(table["profile_id"][i]))
        if kind == POSITION_DRIFT and not np.ma.getmaskarray(table["details"])[i]:
            details = json.loads(str(table["details"][i]))
            profiles += [p["profile_id"] for p in details.get("profiles") or []
                         if p.get("profile_id")]
        for profile in profiles:
            out.setdefault(profile, [])
            what = f"{kind} on {symbol}"
            if what not in out[profile]:
                out[profile].append(what)
    return {profile: "held back by the recency guard: " + ", ".join(sorted(whats))
            for profile, whats in sorted(out.items())}


def empty_mismatches() -> pd.DataFrame:
    """A zero-row result with the columns and dtypes of `reconciliation_diff`."""
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in _NUMBER_COLUMNS else
                                      bool if c == "attributable" else object)
                         for c in MISMATCH_COLUMNS})


# --------------------------------------------------------------------------- the diff

def reconciliation_diff(*, profiles: pd.DataFrame, db_orders: pd.DataFrame,
                        db_positions: pd.DataFrame, db_trade_slices: pd.DataFrame,
                        exchange_open_orders: pd.DataFrame, exchange_positions: pd.DataFrame,
                        cycle_id: str, db_read_at: pd.Timestamp,
                        recency_guard_s: float = 5.0,
                        new_order_grace_s: float = 0.0) -> pd.DataFrame:
    """The mismatch dataset of one cycle: one row per finding, columns `MISMATCH_COLUMNS`.

    See the module docstring for the rules. `result.attrs` holds `suppressed_recent` (findings
    withheld by the recency guard), `suppressed_recent_by_kind`, and `counts_by_kind`.
    """
    db_read_at = pd.Timestamp(db_read_at)
    if db_read_at.tzinfo is None:
        raise ValueError("db_read_at must be timezone-aware (UTC)")
    for name, value in (("recency_guard_s", recency_guard_s),
                        ("new_order_grace_s", new_order_grace_s)):
        if isinstance(value, bool) or not (
                isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a number >= 0, not {value!r}")
    cutoff = db_read_at - pd.Timedelta(seconds=float(recency_guard_s))
    placed_cutoff = db_read_at - pd.Timedelta(seconds=float(new_order_grace_s))

    profiles = require_columns(profiles, DB_PROFILES, "db_profiles")
    db_orders = _numbers(require_columns(db_orders, DB_ORDERS, "db_orders"), "db_orders",
                         ("qty", "filled_qty", "price"))
    db_positions = _numbers(require_columns(db_positions, DB_POSITIONS, "db_positions"),
                            "db_positions", ("qty", "avg_price"))
    slices = _numbers(require_columns(db_trade_slices, DB_TRADE_SLICES, "db_trade_slices"),
                      "db_trade_slices",
                      ("entry_qty", "exit_qty", "virtual_open_qty", "entry_price"))
    ex_orders = _numbers(require_columns(exchange_open_orders, EXCHANGE_OPEN_ORDERS,
                                         "exchange_open_orders"), "exchange_open_orders",
                         ("qty", "filled_qty", "price", "notional_usd"))
    ex_positions = _numbers(require_columns(with_position_legs(exchange_positions), EXCHANGE_POSITIONS,
                                            "exchange_positions"), "exchange_positions",
                            ("qty", "entry_price", "mark_price", "notional_usd", "min_qty_step"))
    # The exchange reports a symbol that matters but holds nothing as side "flat", qty 0.
    for frame, name, sides in ((db_positions, "db_positions", POSITION_SIDES),
                               (ex_positions, "exchange_positions", POSITION_SIDES + (FLAT,))):
        _require_sides(frame, name, sides)
        _require_present(frame, name, "qty")
    bad_legs = ex_positions.loc[~ex_positions["position_side"].isin(POSITION_LEGS)]
    if len(bad_legs):
        raise SnapshotShapeError(
            f"exchange_positions.position_side must be one of {', '.join(POSITION_LEGS)}; found "
            f"{bad_legs['position_side'].head(3).tolist()!r}")
    flat_with_qty = ex_positions.loc[(ex_positions["side"] == FLAT) & (ex_positions["qty"] != 0)]
    if len(flat_with_qty):
        raise SnapshotShapeError(
            "exchange_positions: side 'flat' with a non-zero qty for "
            + ", ".join(flat_with_qty["symbol"].astype(str).head(5)))
    open_slices = slices.loc[(slices["status"] == OPEN_SLICE_STATUS).fillna(False)]
    _require_sides(open_slices, "db_trade_slices", POSITION_SIDES)
    _require_present(open_slices, "db_trade_slices", "virtual_open_qty")

    # Timestamps are checked over every row here; the recency of orders is only needed for
    # the few rows stage 1 keeps, so it is computed for those.
    d_times = _times(db_orders, "db_orders", "updated_at")
    e_times = _times(ex_orders, "exchange_open_orders", "created_at")
    db_positions = db_positions.assign(
        _recent=_recent(db_positions, "db_positions", "updated_at", cutoff))
    slices = slices.assign(_recent=_recent(slices, "db_trade_slices", "updated_at", cutoff),
                           _attributed=_slices_attributed(slices, profiles))

    con, account_con = _cursor(), _cursor()
    try:
        for cursor in (con, account_con):
            cursor.execute("SET TimeZone = 'UTC'")
        account_con.register("db_positions", db_positions)
        account_con.register("exchange_positions", ex_positions)
        account_con.register("db_trade_slices", slices)
        account_con.register("profiles", profiles)
        con.register("db_orders", _with_row(db_orders, _D_MATCH_COLUMNS))
        con.register("exchange_open_orders", _with_row(ex_orders, _E_MATCH_COLUMNS))
        # `execute` plans the statement once (`sql(...)` binds it, then plans it again to run).
        found = con.execute(_MATCH_SQL).fetchnumpy()
        with ThreadPoolExecutor(max_workers=1) as pool:
            # Positions and slices run in DuckDB (no GIL) while this thread takes the rows
            # of the orders stage 2 needs.
            account_findings = pool.submit(
                lambda: account_con.execute(_ACCOUNT_FINDINGS_SQL).fetchnumpy())
            d_row, e_row = found["d_row"], found["e_row"]
            d_null, e_null = np.ma.getmaskarray(d_row), np.ma.getmaskarray(e_row)
            d_row = np.ma.getdata(d_row).astype(np.int64)
            e_row = np.ma.getdata(e_row).astype(np.int64)
            d_pos = np.unique(d_row[~d_null])
            e_pos = np.unique(e_row[~e_null])
            candidates = np.unique(e_row[d_null & ~e_null])
            matches = pa.table({"d_row": pa.array(d_row, mask=d_null, type=pa.int64()),
                                "e_row": pa.array(e_row, mask=e_null, type=pa.int64())})
            # Only the rows and columns stage 2 reads.
            d_rows = _rows(db_orders, _D_ROW_COLUMNS, d_pos)
            d_rows["_recent"] = _after(_take(d_times, d_pos), cutoff)
            # Placing times only for these rows: stage 1 keeps the drift, not the book.
            placed = pd.DataFrame({"created_at": _take(db_orders["created_at"], d_pos)})
            d_rows["_new"] = _after(_times(placed, "db_orders", "created_at"), placed_cutoff)
            e_rows = _rows(ex_orders, _E_ROW_COLUMNS, e_pos)
            e_created = _take(e_times, e_pos)
            e_rows["_recent"] = _after(e_created, cutoff)
            e_rows["created_at"] = pd.to_datetime(e_created, utc=True)
            con.register("matches", matches)
            con.register("marks", _marks(ex_positions))
            con.register("d_rows", d_rows)
            con.register("e_rows", e_rows)
            con.register("attributions", _attributions(
                _rows(ex_orders, ("account", "client_order_id"), candidates), profiles))
            order_findings = con.execute(_ORDER_FINDINGS_SQL).fetchnumpy()
            account_findings = account_findings.result()
    finally:
        con.close()
        account_con.close()

    table = {col: np.ma.concatenate([order_findings[col], account_findings[col]])
             for col in order_findings}
    suppressed = np.ma.filled(table["suppressed"], False).astype(bool)
    kinds = np.ma.getdata(table["kind"])
    result = _to_result(table, ~suppressed, cycle_id)
    held = pd.Series(kinds[suppressed], dtype=object).value_counts()
    result.attrs["not_fully_checked"] = _not_fully_checked(table, suppressed)
    result.attrs["suppressed_recent"] = int(suppressed.sum())
    result.attrs["suppressed_recent_by_kind"] = {k: int(held[k]) for k in MISMATCH_KINDS
                                                 if k in held.index}
    counts = result["kind"].value_counts()
    result.attrs["counts_by_kind"] = {k: int(counts.get(k, 0)) for k in MISMATCH_KINDS}
    return result
