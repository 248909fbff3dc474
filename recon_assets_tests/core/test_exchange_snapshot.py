"""The exchange snapshot's plain decisions: activity fingerprints, which fills to read, which
symbols matter, the freshness verdict, the frames' columns, the income sweep, the read plan's
weights."""

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recon_assets.core.exchange_snapshot import (INCOME_SWEEP_OVERLAP_MS, Cursor, activity_key,
                                                 db_symbols, evaluate_snapshot, fill_rows,
                                                 fills_frame,
                                                 income_sweep_due, income_sweep_start,
                                                 next_income_cursor, open_orders_frame,
                                                 plan_fill_reads, positions_frame)
from recon_assets.core.request_weights import per_symbol_is_cheaper, request_weight
from recon_assets.core.frames import (EXCHANGE_FILLS, EXCHANGE_OPEN_ORDERS, EXCHANGE_POSITIONS,
                                      with_fill_legs)
from recon_assets.core.rules import POSITION_LEGS

pytestmark = pytest.mark.unit


def _pos(symbol, amt, t):
    return {"symbol": symbol, "contracts": abs(amt), "info": {"positionAmt": str(amt), "updateTime": t}}


def test_activity_key_changes_with_every_fill_and_needs_a_position():
    orders = [{"symbol": "B", "id": "1", "info": {"executedQty": "0", "updateTime": 5}}]
    key = activity_key("B", orders, [_pos("B", 1, 10)])
    assert key == activity_key("B", orders, [_pos("B", 1, 10)])
    assert key != activity_key("B", orders, [_pos("B", 1, 11)])  # same amount, a later change
    assert key != activity_key("B", [], [_pos("B", 1, 10)])
    assert activity_key("B", orders, [_pos("B", 0, 10)]) is None


def test_plan_reads_only_what_may_have_new_fills():
    now = 10_000_000
    cursors = {"A": Cursor(5, "k-a", now - 1000), "B": Cursor(7, "k-b", now - 1000),
               "C": Cursor(9, "k-c", now - 10_000_000), "E": Cursor(None, None, now)}
    keys = {"A": "k-a", "B": "changed", "C": "k-c", "D": "k-d", "E": None, "F": None}
    assert plan_fill_reads(keys, keys, cursors, now, 900_000) == ["B", "C", "D", "E", "F"]


def test_db_symbols_are_open_slices_open_orders_and_positions():
    snapshot = {"trade_slices": [{"symbol": "A", "status": "open"}],
                "orders": [{"symbol": "B", "status": "open"}, {"symbol": "X", "status": "filled"}],
                "positions": [{"symbol": "C", "qty": "0.5"}, {"symbol": "Y", "qty": "0"}]}
    assert db_symbols(snapshot) == {"A", "B", "C"}


def test_freshness_and_completeness_verdict():
    ok = evaluate_snapshot(read_started=100, read_finished=101, checked_at=102, max_age_s=60, max_spread_s=10)
    assert ok.passed and ok.problems == ()
    bad = evaluate_snapshot(read_started=100, read_finished=150, checked_at=300, max_age_s=60,
                            max_spread_s=10, missing_symbols=["Z"], incomplete_symbols=["Q"])
    assert not bad.passed and len(bad.problems) == 4


def test_frames_keep_the_exact_columns_when_empty():
    now = pd.Timestamp.now(tz="UTC")
    assert tuple(open_orders_frame("a", [], {}, now).columns) == EXCHANGE_OPEN_ORDERS
    assert tuple(positions_frame("a", [], [], {}, now).columns) == EXCHANGE_POSITIONS
    assert tuple(fills_frame("a", [], now).columns) == EXCHANGE_FILLS


# ---- the leg of a fill (issue item 11, "Hedge fills know their leg") -----------------------

def _trade(fill_id, side, info):
    return {"id": str(fill_id), "order": "77", "symbol": "BTC/USDT:USDT", "side": side,
            "amount": 0.01, "price": 60000.0, "timestamp": 1_767_225_600_000 + fill_id,
            "fee": {"cost": 0.24, "currency": "USDT"}, "info": info}


def test_a_fill_keeps_the_leg_binance_names_and_a_fill_without_one_is_one_way():
    trades = [_trade(1, "sell", {"positionSide": "SHORT"}), _trade(2, "sell", {"positionSide": "LONG"}),
              _trade(3, "buy", {"positionSide": "BOTH"}), _trade(4, "buy", {}),
              {**_trade(5, "buy", {}), "info": None}]
    rows = fill_rows("a", trades, {})
    assert [r["position_side"] for r in rows] == ["short", "long", "both", "both", "both"]
    assert {r["position_side"] for r in rows} <= set(POSITION_LEGS)
    frame = fills_frame("a", rows, pd.Timestamp.now(tz="UTC"), hedged=True)
    assert tuple(frame.columns) == EXCHANGE_FILLS
    assert frame["position_side"].tolist() == ["short", "long", "both", "both", "both"]


@pytest.mark.parametrize("leg", ["SIDEWAYS", "short", "", None, 1, ["SHORT"]])
def test_a_fill_naming_an_unknown_leg_is_refused(leg):
    with pytest.raises(ValueError, match="positionSide"):
        fill_rows("a", [_trade(1, "sell", {"positionSide": leg})], {})


def test_a_stored_fill_without_its_leg_is_one_way_only_on_a_one_way_account():
    """Fills stored before their leg was kept (recon.exchange_fills.position_side null, or a
    row without the key): on a one-way account they are on BOTH; on a hedge-mode account the
    leg cannot be told from the side (a SELL may open a short or close a long), so it stays
    unknown (None), never guessed."""
    now = pd.Timestamp.now(tz="UTC")
    rows = [r for r in fill_rows("a", [_trade(1, "sell", {"positionSide": "SHORT"}),
                                       _trade(2, "sell", {})], {})]
    rows[1].pop("position_side")
    rows[0]["position_side"] = None
    one_way = fills_frame("a", [dict(r) for r in rows], now)
    assert one_way["position_side"].tolist() == ["both", "both"]
    hedged = fills_frame("a", [dict(r) for r in rows], now, hedged=True)
    assert hedged["position_side"].tolist() == [None, None]


def test_with_fill_legs_accepts_frames_without_the_column():
    frame = fills_frame("a", fill_rows("a", [_trade(1, "sell", {"positionSide": "SHORT"}),
                                             _trade(2, "buy", {"positionSide": "LONG"})], {}),
                        pd.Timestamp.now(tz="UTC"))
    old = frame.drop(columns=["position_side"])  # a frame written or built before item 11
    assert with_fill_legs(old)["position_side"].tolist() == ["both", "both"]
    assert with_fill_legs(old, hedged=True)["position_side"].tolist() == [None, None]
    assert "position_side" not in old.columns  # the caller's frame is left as it was
    assert with_fill_legs(frame, hedged=True)["position_side"].tolist() == ["short", "long"]
    assert with_fill_legs(frame)["position_side"].tolist() == ["short", "long"]
    partly = frame.assign(position_side=["short", None])
    assert with_fill_legs(partly, hedged=True)["position_side"].tolist() == ["short", None]
    assert with_fill_legs(partly)["position_side"].tolist() == ["short", "both"]
    empty = with_fill_legs(old.iloc[0:0])
    assert "position_side" in empty.columns and len(empty) == 0


# ---- the income sweep ----------------------------------------------------------------------

def test_the_income_sweep_is_due_when_never_run_or_after_its_interval_and_never_when_off():
    assert income_sweep_due(None, 1_000, 900_000)
    assert not income_sweep_due(500_000, 1_000_000, 900_000)
    assert income_sweep_due(100_000, 1_000_000, 900_000)
    assert not income_sweep_due(None, 1_000_000, 0)


@given(cursor=st.one_of(st.none(), st.integers(0, 10**13)), now=st.integers(10**9, 10**13),
       window=st.integers(1, 10**9))
def test_a_sweep_starts_at_or_before_its_cursor_and_never_after_now(cursor, now, window):
    start = income_sweep_start(cursor, now, window)
    assert start <= now
    if cursor is None:
        assert start == now - window
    else:
        assert start <= cursor and start >= min(cursor, now) - INCOME_SWEEP_OVERLAP_MS


@given(start=st.integers(0, 10**13), last=st.one_of(st.none(), st.integers(0, 10**13)),
       now=st.integers(0, 10**13), complete=st.booleans())
def test_the_income_cursor_never_moves_back_and_an_unfinished_sweep_resumes_where_it_stopped(
        start, last, now, complete):
    cursor = next_income_cursor(start, last, now, complete)
    assert cursor >= start
    if not complete:
        assert cursor == max(last if last is not None else start, start)


# ---- request weights and the read plan -------------------------------------------------------

def test_open_orders_weigh_one_per_symbol_and_forty_for_all():
    assert request_weight("GET", "/fapi/v1/openOrders", {"symbol": "BTCUSDT"}) == 1
    assert request_weight("GET", "/fapi/v1/openOrders", {}) == 40
    assert request_weight("GET", "/fapi/v1/openAlgoOrders", {}) == 40
    assert request_weight("GET", "/fapi/v1/income", {}) == 30
    assert request_weight("GET", "/fapi/v1/klines", {"limit": "1"}) == 1
    assert per_symbol_is_cheaper(39) and not per_symbol_is_cheaper(40)
