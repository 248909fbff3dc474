"""The exchange snapshot's plain decisions: activity fingerprints, which fills to read, which
symbols matter, the freshness verdict, the frames' columns, the income sweep, the read plan's
weights."""

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recon_assets.core.exchange_snapshot import (INCOME_SWEEP_OVERLAP_MS, Cursor, activity_key,
                                                 db_symbols, evaluate_snapshot, fills_frame,
                                                 income_sweep_due, income_sweep_start,
                                                 next_income_cursor, open_orders_frame,
                                                 plan_fill_reads, positions_frame)
from recon_assets.core.request_weights import per_symbol_is_cheaper, request_weight
from recon_assets.core.frames import EXCHANGE_FILLS, EXCHANGE_OPEN_ORDERS, EXCHANGE_POSITIONS

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
