"""The exchange snapshot's plain decisions: activity fingerprints, which fills to read, which
symbols matter, the freshness verdict, the frames' columns."""

import pandas as pd
import pytest

from recon_assets.core.exchange_snapshot import (Cursor, activity_key, db_symbols,
                                                 evaluate_snapshot, fills_frame,
                                                 open_orders_frame, plan_fill_reads,
                                                 positions_frame)
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
