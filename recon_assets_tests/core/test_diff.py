"""Example-based tests of `core.diff.reconciliation_diff`: one or more per kind, the matching
rules, tolerances, the recency guard, bad input, and the benchmark's dict-loop baseline."""

from __future__ import annotations

import decimal
import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from recon_assets.core import frames as F
from recon_assets.core.diff import (
    MISMATCH_COLUMNS,
    MISMATCH_KINDS,
    empty_mismatches,
    reconciliation_diff,
)
from recon_assets.core.frames import SnapshotShapeError

pytestmark = pytest.mark.unit

READ_AT = pd.Timestamp("2024-06-01T12:00:00Z")
OLD = READ_AT - pd.Timedelta(minutes=30)
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
CHECK_KINDS = {"missing_from_exchange", "missing_in_db", "qty_drift", "status_drift",
               "price_drift", "position_drift", "ghost_slice"}  # recon.mismatches CHECK


# --------------------------------------------------------------------------- builders
# Shared with test_diff_properties.py.

def profile(profile_id: str, account: str = "A", sub_tag: str | None = None) -> dict:
    return {"profile_id": profile_id, "exchange_account": account,
            "sub_tag": sub_tag if sub_tag is not None else profile_id.upper(),
            "allocated_capital_usd": 10_000.0, "trading_state": "active", "pause_source": None,
            "paused_at": None, "last_auto_resume_at": None}


def db_order(coid: str, *, profile_id: str = "p1", account: str = "A", trade_id: str = "t1",
             symbol: str = BTC, side: str = "buy", status: str = "open", qty: float = 1.0,
             filled: float = 0.0, price: float | None = 100.0, eoid: str | None = None,
             intent: str = "ENTRY", updated_at: pd.Timestamp = OLD) -> dict:
    return {"profile_id": profile_id, "exchange_account": account, "trade_id": trade_id,
            "intent": intent, "symbol": symbol, "side": side, "client_order_id": coid,
            "exchange_order_id": eoid, "status": status, "qty": qty, "filled_qty": filled,
            "price": price, "created_at": OLD, "updated_at": updated_at}


def ex_order(coid: str | None, eoid: str, *, account: str = "A", symbol: str = BTC,
             side: str = "buy", qty: float = 1.0, filled: float = 0.0,
             price: float | None = 100.0, created_at: pd.Timestamp = OLD) -> dict:
    return {"account": account, "symbol": symbol, "exchange_order_id": eoid,
            "client_order_id": coid, "side": side, "order_type": "limit", "status": "open",
            "qty": qty, "filled_qty": filled, "price": price,
            "notional_usd": None if price is None else qty * price, "created_at": created_at,
            "fetched_at": READ_AT}


def order_pair(coid: str, eoid: str, **kw) -> tuple[dict, dict]:
    """A DB order and the identical exchange open order."""
    ex_kw = {k: kw[k] for k in ("account", "symbol", "side", "qty", "filled", "price") if k in kw}
    return db_order(coid, eoid=eoid, **kw), ex_order(coid, eoid, **ex_kw)


def db_position(profile_id: str, qty: float, *, side: str = "long", account: str = "A",
                symbol: str = BTC, avg_price: float = 100.0,
                updated_at: pd.Timestamp = OLD) -> dict:
    return {"profile_id": profile_id, "exchange_account": account, "symbol": symbol,
            "side": side, "qty": qty, "avg_price": avg_price, "updated_at": updated_at}


def ex_position(qty: float, *, side: str = "long", account: str = "A", symbol: str = BTC,
                step: float | None = 0.001, mark: float | None = 101.0,
                entry: float = 100.0) -> dict:
    return {"account": account, "symbol": symbol, "side": side, "qty": qty,
            "entry_price": entry, "mark_price": mark,
            "notional_usd": qty * (mark or entry), "min_qty_step": step, "fetched_at": READ_AT}


def trade_slice(profile_id: str, trade_id: str, qty: float, *, slice_no: int = 1,
                side: str = "long", account: str = "A", symbol: str = BTC, exit_qty: float = 0.0,
                status: str = "open", entry_price: float | None = 100.0,
                updated_at: pd.Timestamp = OLD, order_client_ids: list | None = None) -> dict:
    """A slice; its trade's orders carry the profile's default sub tag unless told otherwise."""
    if order_client_ids is None:
        order_client_ids = [f"rc.{profile_id.upper()}.{trade_id}.E1"]
    return {"profile_id": profile_id, "exchange_account": account, "trade_id": trade_id,
            "slice_no": slice_no, "symbol": symbol, "side": side, "entry_qty": qty,
            "exit_qty": exit_qty, "virtual_open_qty": qty - exit_qty, "entry_price": entry_price,
            "opened_at": OLD, "status": status, "updated_at": updated_at,
            "order_client_ids": order_client_ids}


def snapshot(*, profiles=(), db_orders=(), db_positions=(), db_trade_slices=(),
             exchange_open_orders=(), exchange_positions=()) -> dict[str, pd.DataFrame]:
    def frame(rows, columns):
        return pd.DataFrame(list(rows), columns=list(columns))
    return {
        "profiles": frame(profiles or [profile("p1")], F.DB_PROFILES),
        "db_orders": frame(db_orders, F.DB_ORDERS),
        "db_positions": frame(db_positions, F.DB_POSITIONS),
        "db_trade_slices": frame(db_trade_slices, F.DB_TRADE_SLICES),
        "exchange_open_orders": frame(exchange_open_orders, F.EXCHANGE_OPEN_ORDERS),
        "exchange_positions": frame(exchange_positions, F.EXCHANGE_POSITIONS),
    }


def diff(snap: dict[str, pd.DataFrame], *, db_read_at: pd.Timestamp = READ_AT,
         recency_guard_s: float = 5.0, cycle_id: str = "run-1",
         new_order_grace_s: float = 0.0) -> pd.DataFrame:
    result = reconciliation_diff(**snap, cycle_id=cycle_id, db_read_at=db_read_at,
                                 recency_guard_s=recency_guard_s,
                                 new_order_grace_s=new_order_grace_s)
    check_shape(result)
    return result


def check_shape(result: pd.DataFrame) -> None:
    """What every result must satisfy, whatever the input."""
    assert tuple(result.columns) == MISMATCH_COLUMNS
    assert set(result["kind"]) <= CHECK_KINDS
    assert (result["notional_usd"] >= 0).all()
    assert result["notional_usd"].notna().all()
    assert result["attributable"].dtype == bool
    for text in result["details"]:
        assert isinstance(json.loads(text), dict)  # valid JSON, no NaN
    for col in ("profile_id", "client_order_id", "exchange_order_id", "trade_id", "symbol"):
        assert not any(isinstance(v, float) for v in result[col]), f"{col} holds NaN, not None"
    # attributable <=> a profile, except ghost slices (always their profile's, attributable
    # only when that profile carries a sub_tag on the account).
    not_ghost = result["kind"] != "ghost_slice"
    assert (result.loc[not_ghost, "attributable"] ==
            result.loc[not_ghost, "profile_id"].notna()).all()
    assert result.loc[~not_ghost, "profile_id"].notna().all()
    ranks = result["kind"].map({k: i for i, k in enumerate(MISMATCH_KINDS)})
    assert ranks.is_monotonic_increasing


def only(result: pd.DataFrame, kind: str) -> pd.Series:
    assert list(result["kind"]) == [kind], result[["kind", "client_order_id"]]
    return result.iloc[0]


def details(row: pd.Series) -> dict:
    return json.loads(row["details"])


# --------------------------------------------------------------------------- clean states

def test_identical_states_make_no_rows_and_keep_the_output_shape():
    pairs = [order_pair(f"rc.P1.t{i}.E1", str(i), qty=1.5, filled=0.5 * (i % 2), price=10.0 + i)
             for i in range(5)]
    snap = snapshot(db_orders=[d for d, _ in pairs], exchange_open_orders=[e for _, e in pairs],
                    db_positions=[db_position("p1", 2.0)], exchange_positions=[ex_position(2.0)],
                    db_trade_slices=[trade_slice("p1", "t9", 2.0)])
    result = diff(snap)
    assert result.empty
    assert result.attrs["suppressed_recent"] == 0
    assert result.attrs["counts_by_kind"] == {k: 0 for k in MISMATCH_KINDS}
    assert list(result.dtypes) == list(empty_mismatches().dtypes)


def test_all_frames_empty_is_no_finding():
    assert diff(snapshot()).empty


def test_terminal_db_orders_absent_from_the_exchange_are_not_findings():
    snap = snapshot(db_orders=[db_order("rc.P1.t1.E1", status=s, eoid=str(i)) for i, s in
                               enumerate(("filled", "canceled", "rejected", "expired"))])
    assert diff(snap).empty


# --------------------------------------------------------------------------- order kinds

def test_open_db_order_absent_from_the_exchange_is_missing_from_exchange():
    snap = snapshot(db_orders=[db_order("rc.P1.t1.E1", qty=2.0, filled=0.5, price=100.0,
                                        status="partially_filled", eoid="77")])
    row = only(diff(snap), "missing_from_exchange")
    assert (row["profile_id"], row["exchange_account"], row["symbol"], row["trade_id"]) == \
        ("p1", "A", BTC, "t1")
    assert (row["client_order_id"], row["exchange_order_id"]) == ("rc.P1.t1.E1", "77")
    assert row["attributable"]
    assert row["db_qty"] == 2.0 and math.isnan(row["exchange_qty"])
    assert row["db_status"] == "partially_filled" and row["exchange_status"] is None
    assert row["notional_usd"] == pytest.approx(1.5 * 100.0)  # remaining qty x price
    assert row["cycle_id"] == "run-1"
    assert details(row)["remaining_qty"] == pytest.approx(1.5)


@pytest.mark.parametrize("status", ["new", "open", "partially_filled"])
def test_every_open_status_counts_as_open(status):
    assert list(diff(snapshot(db_orders=[db_order("rc.P1.t1.E1", status=status)]))["kind"]) == \
        ["missing_from_exchange"]


def test_exchange_order_of_a_known_sub_tag_is_attributable_missing_in_db():
    snap = snapshot(profiles=[profile("p1", sub_tag="ALP"), profile("p2", sub_tag="BET")],
                    exchange_open_orders=[ex_order("rc.BET.t42.X2", "900", qty=3.0, price=10.0)])
    row = only(diff(snap), "missing_in_db")
    assert row["attributable"]
    assert (row["profile_id"], row["trade_id"]) == ("p2", "t42")
    assert row["exchange_qty"] == 3.0 and math.isnan(row["db_qty"])
    assert row["notional_usd"] == pytest.approx(30.0)
    d = details(row)
    assert (d["attribution"], d["sub_tag"], d["intent"]) == ("sub_tag", "BET", "EXIT")


@pytest.mark.parametrize("coid, why", [
    ("web_123", "foreign_id"),             # not our format
    (None, "foreign_id"),                  # no client id at all
    ("rc.ZZZ.t1.E1", "unknown_sub_tag"),   # our format, no such profile
])
def test_foreign_exchange_orders_are_unattributable(coid, why):
    snap = snapshot(profiles=[profile("p1", sub_tag="ALP")],
                    exchange_open_orders=[ex_order(coid, "901")])
    row = only(diff(snap), "missing_in_db")
    assert not row["attributable"]
    assert row["profile_id"] is None and row["trade_id"] is None
    assert details(row)["attribution"] == why


def test_sub_tag_of_a_profile_on_another_account_is_foreign_here():
    snap = snapshot(profiles=[profile("p1", account="A", sub_tag="ALP"),
                              profile("p2", account="B", sub_tag="BET")],
                    exchange_open_orders=[ex_order("rc.BET.t1.E1", "1", account="A")])
    row = only(diff(snap), "missing_in_db")
    assert not row["attributable"] and details(row)["attribution"] == "unknown_sub_tag"


def test_a_sub_tag_two_profiles_share_on_one_account_is_ambiguous():
    snap = snapshot(profiles=[profile("p1", sub_tag="ALP"), profile("p2", sub_tag="ALP")],
                    exchange_open_orders=[ex_order("rc.ALP.t1.E1", "1")])
    row = only(diff(snap), "missing_in_db")
    assert not row["attributable"] and row["profile_id"] is None
    assert details(row)["attribution"] == "ambiguous_sub_tag"


@pytest.mark.parametrize("status", ["filled", "canceled", "rejected", "expired"])
def test_exchange_open_order_with_a_terminal_db_row_is_status_drift(status):
    d, e = order_pair("rc.P1.t1.E1", "5", qty=2.0, filled=0.5, price=10.0)
    d["status"] = status
    row = only(diff(snapshot(db_orders=[d], exchange_open_orders=[e])), "status_drift")
    assert (row["db_status"], row["exchange_status"]) == (status, "open")
    assert (row["profile_id"], row["trade_id"], row["exchange_order_id"]) == ("p1", "t1", "5")
    assert row["notional_usd"] == pytest.approx(1.5 * 10.0)


@pytest.mark.parametrize("change, drift", [
    ({"qty": 1.5}, ["qty"]),
    ({"filled": 0.25}, ["filled_qty"]),
    ({"side": "sell"}, ["side"]),
    ({"qty": 1.5, "filled": 0.25}, ["qty", "filled_qty"]),
])
def test_matched_open_orders_with_other_quantities_are_qty_drift(change, drift):
    d, _ = order_pair("rc.P1.t1.E1", "5", qty=1.0, price=100.0)
    e = ex_order("rc.P1.t1.E1", "5", **{"qty": 1.0, "price": 100.0, **change})
    row = only(diff(snapshot(db_orders=[d], exchange_open_orders=[e])), "qty_drift")
    assert (row["db_qty"], row["exchange_qty"]) == (1.0, change.get("qty", 1.0))
    assert details(row)["drift"] == drift
    assert details(row)["matched_by"] == "client_order_id"
    assert row["notional_usd"] > 0


def test_matched_open_orders_with_another_price_are_price_drift():
    d, _ = order_pair("rc.P1.t1.E1", "5", qty=2.0, price=100.0)
    e = ex_order("rc.P1.t1.E1", "5", qty=2.0, price=101.0)
    row = only(diff(snapshot(db_orders=[d], exchange_open_orders=[e])), "price_drift")
    assert (row["db_price"], row["exchange_price"]) == (100.0, 101.0)
    assert row["notional_usd"] == pytest.approx(2.0 * 1.0)  # remaining x |price difference|


def test_qty_and_price_drift_on_one_order_are_two_rows():
    d, _ = order_pair("rc.P1.t1.E1", "5")
    e = ex_order("rc.P1.t1.E1", "5", qty=2.0, price=99.0)
    assert list(diff(snapshot(db_orders=[d], exchange_open_orders=[e]))["kind"]) == \
        ["qty_drift", "price_drift"]


def test_float_noise_within_the_relative_tolerance_is_not_drift():
    d, _ = order_pair("rc.P1.t1.E1", "5", qty=0.3, filled=0.1, price=27_123.45)
    e = ex_order("rc.P1.t1.E1", "5", qty=0.1 + 0.2, filled=0.1 * (1 + 1e-12),
                 price=27_123.45 * (1 + 1e-11))
    assert diff(snapshot(db_orders=[d], exchange_open_orders=[e])).empty
    e2 = ex_order("rc.P1.t1.E1", "5", qty=0.3 * (1 + 1e-7), filled=0.1, price=27_123.45)
    assert list(diff(snapshot(db_orders=[d], exchange_open_orders=[e2]))["kind"]) == ["qty_drift"]


def test_price_zero_and_no_price_are_the_same_for_market_orders():
    d, _ = order_pair("rc.P1.t1.E1", "5", price=None)
    e = ex_order("rc.P1.t1.E1", "5", price=0.0)
    assert diff(snapshot(db_orders=[d], exchange_open_orders=[e])).empty
    e2 = ex_order("rc.P1.t1.E1", "5", price=50.0)
    assert list(diff(snapshot(db_orders=[d], exchange_open_orders=[e2]))["kind"]) == \
        ["price_drift"]


def test_fallback_matches_on_exchange_order_id_when_the_client_id_differs():
    d = db_order("rc.P1.t1.E1", eoid="555")
    e = ex_order("renamed-by-exchange", "555")
    assert diff(snapshot(db_orders=[d], exchange_open_orders=[e])).empty
    e2 = ex_order("renamed-by-exchange", "555", qty=3.0)
    row = only(diff(snapshot(db_orders=[d], exchange_open_orders=[e2])), "qty_drift")
    assert details(row)["matched_by"] == "exchange_order_id"
    assert details(row)["exchange_client_order_id"] == "renamed-by-exchange"
    assert (row["client_order_id"], row["exchange_order_id"]) == ("rc.P1.t1.E1", "555")


def test_fallback_to_a_terminal_db_row_is_status_drift_not_missing_in_db():
    d = db_order("rc.P1.t1.E1", eoid="555", status="canceled")
    e = ex_order(None, "555")
    row = only(diff(snapshot(db_orders=[d], exchange_open_orders=[e])), "status_drift")
    assert details(row)["matched_by"] == "exchange_order_id"


def test_no_fallback_to_a_db_row_already_matched_by_client_id():
    d = db_order("rc.P1.t1.E1", eoid="555")
    e_same = ex_order("rc.P1.t1.E1", "556")   # the DB row's own order (by client id)
    e_other = ex_order("web_9", "555")        # claims the DB row's exchange id
    result = diff(snapshot(db_orders=[d], exchange_open_orders=[e_same, e_other]))
    assert list(result["kind"]) == ["missing_in_db"]
    assert result.iloc[0]["client_order_id"] == "web_9"


def test_no_fallback_without_an_exchange_id_in_the_db():
    d = db_order("rc.P1.t1.E1", eoid=None)
    e = ex_order("other", "555")
    assert sorted(diff(snapshot(db_orders=[d], exchange_open_orders=[e]))["kind"]) == \
        ["missing_from_exchange", "missing_in_db"]


def test_the_same_client_id_on_another_account_does_not_match():
    d = db_order("rc.P1.t1.E1", account="A")
    e = ex_order("rc.P1.t1.E1", "1", account="B")
    result = diff(snapshot(db_orders=[d], exchange_open_orders=[e]))
    assert list(zip(result["kind"], result["exchange_account"])) == \
        [("missing_from_exchange", "A"), ("missing_in_db", "B")]


# --------------------------------------------------------------------------- positions

def test_position_drift_sums_the_profiles_of_an_account():
    snap = snapshot(profiles=[profile("p1"), profile("p2")],
                    db_positions=[db_position("p1", 1.0), db_position("p2", 0.4, side="short")],
                    exchange_positions=[ex_position(0.6)])
    assert diff(snap).empty  # 1.0 - 0.4 == 0.6
    snap["exchange_positions"] = snapshot(exchange_positions=[ex_position(0.5)])[
        "exchange_positions"]
    row = only(diff(snap), "position_drift")
    assert row["profile_id"] is None and not row["attributable"]
    assert row["db_qty"] == pytest.approx(0.6) and row["exchange_qty"] == pytest.approx(0.5)
    assert row["notional_usd"] == pytest.approx(0.1 * 101.0)  # |difference| x mark
    d = details(row)
    assert d["profiles"] == [{"profile_id": "p1", "net_qty": 1.0},
                             {"profile_id": "p2", "net_qty": -0.4}]
    assert d["difference"] == pytest.approx(0.1)


def test_position_difference_below_the_step_is_not_drift_and_at_the_step_is():
    base = dict(db_positions=[db_position("p1", 1.0)])
    assert diff(snapshot(**base, exchange_positions=[ex_position(1.0009, step=0.001)])).empty
    assert list(diff(snapshot(**base, exchange_positions=[ex_position(1.001, step=0.001)]))[
        "kind"]) == ["position_drift"]


def _leg(qty: float, leg: str, **kw) -> dict:
    row = ex_position(qty, side=leg if qty else "flat", **kw)
    return {**row, "position_side": leg}


def test_a_hedge_mode_account_is_compared_leg_by_leg_where_its_net_would_hide_the_drift():
    """DB: p1 long 1, p2 short 1 (net 0). Exchange in hedge mode: long leg 2, short leg 2 (net
    0). Both legs drifted by 1; compared net, nothing would show."""
    base = dict(profiles=[profile("p1"), profile("p2")],
                db_positions=[db_position("p1", 1.0), db_position("p2", 1.0, side="short")])
    hedged = diff(snapshot(**base, exchange_positions=[_leg(2.0, "long"), _leg(2.0, "short")]))
    drifts = hedged[hedged["kind"] == "position_drift"]
    assert sorted(details(r)["position_side"] for r in drifts.to_dict("records")) == ["long", "short"]
    assert sorted(drifts["db_qty"]) == [-1.0, 1.0] and sorted(drifts["exchange_qty"]) == [-2.0, 2.0]
    # The same exchange quantities as one-way rows (netted): no drift to see.
    netted = diff(snapshot(**base, exchange_positions=[ex_position(0.0, side="flat")]))
    assert netted.empty
    # In sync leg by leg: nothing.
    assert diff(snapshot(**base, exchange_positions=[_leg(1.0, "long"), _leg(1.0, "short")])).empty


def test_a_slice_on_a_flat_leg_is_a_ghost_though_the_other_leg_is_open():
    snap = snapshot(profiles=[profile("p1"), profile("p2")],
                    db_positions=[db_position("p1", 1.0), db_position("p2", 1.0, side="short")],
                    db_trade_slices=[trade_slice("p1", "t1", 1.0),
                                     trade_slice("p2", "t2", 1.0, side="short")],
                    exchange_positions=[_leg(1.0, "long"), _leg(0.0, "short")])
    found = diff(snap)
    assert sorted(found["kind"]) == ["ghost_slice", "position_drift"]
    ghost = found[found["kind"] == "ghost_slice"].iloc[0]
    assert (ghost["profile_id"], ghost["trade_id"]) == ("p2", "t2")
    assert details(found[found["kind"] == "position_drift"].iloc[0])["position_side"] == "short"


def test_an_unknown_position_side_is_a_clear_error():
    with pytest.raises(SnapshotShapeError, match="position_side"):
        diff(snapshot(exchange_positions=[{**_leg(1.0, "long"), "position_side": "sideways"}]))


def test_short_on_the_exchange_against_long_in_the_db_is_drift():
    snap = snapshot(db_positions=[db_position("p1", 1.0)],
                    exchange_positions=[ex_position(1.0, side="short")])
    row = only(diff(snap), "position_drift")
    assert (row["db_qty"], row["exchange_qty"]) == (1.0, -1.0)


def test_one_way_rows_of_a_symbol_are_netted():
    """Rows without a leg (position_side "both", or none given) are one-way: summed."""
    snap = snapshot(db_positions=[db_position("p1", 0.5)],
                    exchange_positions=[ex_position(2.0), ex_position(1.5, side="short")])
    assert diff(snap).empty


def test_exchange_position_unknown_to_the_db_is_drift():
    row = only(diff(snapshot(exchange_positions=[ex_position(2.0, symbol=ETH)])),
               "position_drift")
    assert (row["symbol"], row["db_qty"], row["exchange_qty"]) == (ETH, 0.0, 2.0)
    assert details(row)["profiles"] == []


def test_db_position_without_an_exchange_row_is_drift_with_no_step_known():
    row = only(diff(snapshot(db_positions=[db_position("p1", 0.2)])), "position_drift")
    assert details(row)["exchange_row"] is False and details(row)["min_qty_step"] is None
    assert row["notional_usd"] == pytest.approx(0.2 * 100.0)  # falls back to the DB price


def test_a_flat_exchange_row_is_a_zero_position():
    snap = snapshot(db_positions=[db_position("p1", 0.0)],
                    exchange_positions=[ex_position(0.0, side="flat")],
                    db_trade_slices=[trade_slice("p1", "t7", 0.5)])
    assert list(diff(snap)["kind"]) == ["ghost_slice"]
    snap = snapshot(db_positions=[db_position("p1", 0.3, side="short")],
                    exchange_positions=[ex_position(0.0, side="flat")])
    row = only(diff(snap), "position_drift")
    assert (row["db_qty"], row["exchange_qty"]) == (-0.3, 0.0)
    bad = snapshot(exchange_positions=[ex_position(1.0, side="flat")])
    with pytest.raises(SnapshotShapeError, match="flat"):
        diff(bad)


# --------------------------------------------------------------------------- ghost slices

def test_open_slice_while_the_exchange_is_flat_is_a_ghost():
    snap = snapshot(db_trade_slices=[trade_slice("p1", "t7", 0.5, slice_no=2)],
                    exchange_positions=[ex_position(0.0, mark=200.0)])
    row = only(diff(snap), "ghost_slice")
    assert (row["profile_id"], row["trade_id"], row["symbol"]) == ("p1", "t7", BTC)
    assert row["attributable"]
    assert row["db_qty"] == 0.5 and row["exchange_qty"] == 0.0
    assert row["notional_usd"] == pytest.approx(0.5 * 200.0)
    assert details(row)["slice_no"] == 2 and details(row)["price_source"] == "mark_price"


def test_ghost_without_a_mark_price_is_priced_at_its_entry():
    snap = snapshot(db_trade_slices=[trade_slice("p1", "t7", 0.5, entry_price=80.0)],
                    exchange_positions=[ex_position(0.0, side="flat", mark=None)])
    row = only(diff(snap), "ghost_slice")
    assert row["notional_usd"] == pytest.approx(40.0)
    assert details(row)["price_source"] == "entry_price"


def test_a_slice_the_exchange_snapshot_has_no_row_for_is_not_judged():
    """No row is no evidence (the snapshot lists every symbol with an open slice, flat or not):
    the diff, like the heartbeat (`core.book`, state unchecked), calls no ghost from it."""
    assert list(diff(snapshot(db_trade_slices=[trade_slice("p1", "t7", 0.5)]))["kind"]) == []


def test_dust_below_the_step_counts_as_flat():
    snap = snapshot(db_trade_slices=[trade_slice("p1", "t7", 0.5)],
                    db_positions=[db_position("p1", 0.0005)],
                    exchange_positions=[ex_position(0.0005, step=0.001)])
    assert list(diff(snap)["kind"]) == ["ghost_slice"]


def test_no_ghost_when_the_exchange_holds_a_position_or_the_slice_is_not_open():
    snap = snapshot(db_trade_slices=[trade_slice("p1", "t7", 0.5),
                                     trade_slice("p1", "t8", 0.5, exit_qty=0.5),
                                     trade_slice("p1", "t9", 0.5, status="closed",
                                                 symbol=ETH)],
                    db_positions=[db_position("p1", 0.5)],
                    exchange_positions=[ex_position(0.5), ex_position(0.0, symbol=ETH)])
    assert diff(snap).empty


def test_ghost_whose_orders_carry_no_sub_tag_is_unattributable():
    """A profile with a sub tag proves nothing about a slice: its own orders must carry it."""
    legacy = trade_slice("p1", "t7", 0.5, order_client_ids=["legacy123", "rc.P1.t7.X1"])
    other = trade_slice("p1", "t8", 0.5, order_client_ids=["rc.OTHER.t8.E1"])
    none = trade_slice("p1", "t9", 0.5, order_client_ids=[])
    result = diff(snapshot(db_trade_slices=[legacy, other, none],
                           exchange_positions=[ex_position(0.0, side="flat")]))
    ghosts = result[result["kind"] == "ghost_slice"]
    assert list(ghosts["trade_id"]) == ["t7", "t8", "t9"]
    assert not ghosts["attributable"].any()


def test_ghost_of_a_profile_without_sub_tag_is_unattributable():
    p = profile("p1")
    p["sub_tag"] = None
    row = only(diff(snapshot(profiles=[p], db_trade_slices=[trade_slice("p1", "t7", 0.5)],
                             exchange_positions=[ex_position(0.0, side="flat")])),
               "ghost_slice")
    assert row["profile_id"] == "p1" and not row["attributable"]


def test_one_row_per_ghost_slice_in_slice_order():
    snap = snapshot(db_trade_slices=[trade_slice("p1", "t7", 0.5, slice_no=2),
                                     trade_slice("p1", "t7", 0.5, slice_no=1)],
                    exchange_positions=[ex_position(0.0, side="flat")])
    result = diff(snap)
    assert [details(r)["slice_no"] for _, r in result.iterrows()] == [1, 2]


# --------------------------------------------------------------------------- recency guard

def test_recent_db_rows_and_new_exchange_orders_are_not_reported_but_counted():
    recent = READ_AT - pd.Timedelta(seconds=2)
    snap = snapshot(
        db_orders=[db_order("rc.P1.t1.E1", updated_at=recent)],
        exchange_open_orders=[ex_order("rc.P1.t2.E1", "9", created_at=READ_AT +
                                       pd.Timedelta(milliseconds=300))],
        db_positions=[db_position("p1", 1.0, updated_at=recent)],
        db_trade_slices=[trade_slice("p1", "t3", 1.0, updated_at=recent, symbol=ETH)],
        exchange_positions=[ex_position(0.0, side="flat", symbol=ETH)])
    result = diff(snap)
    assert result.empty
    assert result.attrs["suppressed_recent"] == 4
    assert result.attrs["suppressed_recent_by_kind"] == {
        "missing_from_exchange": 1, "missing_in_db": 1, "position_drift": 1, "ghost_slice": 1}
    # Next cycle, with the rows older than the guard, they are reported.
    later = diff(snap, db_read_at=READ_AT + pd.Timedelta(seconds=10))
    assert sorted(later["kind"]) == sorted(["missing_from_exchange", "missing_in_db",
                                            "position_drift", "ghost_slice"])


def test_a_matched_pair_is_suppressed_when_either_side_is_recent():
    d, _ = order_pair("rc.P1.t1.E1", "5")
    d["status"] = "filled"
    d["updated_at"] = READ_AT - pd.Timedelta(seconds=1)
    e = ex_order("rc.P1.t1.E1", "5")
    result = diff(snapshot(db_orders=[d], exchange_open_orders=[e]))
    assert result.empty and result.attrs["suppressed_recent"] == 1


def test_the_guard_window_is_configurable():
    d = db_order("rc.P1.t1.E1", updated_at=READ_AT - pd.Timedelta(seconds=8))
    assert list(diff(snapshot(db_orders=[d]), recency_guard_s=5)["kind"]) == \
        ["missing_from_exchange"]
    assert diff(snapshot(db_orders=[d]), recency_guard_s=10).empty


# --------------------------------------------------------------------------- input handling

@pytest.mark.parametrize("frame, column", [
    ("profiles", "sub_tag"), ("db_orders", "client_order_id"), ("db_orders", "updated_at"),
    ("db_positions", "qty"), ("db_trade_slices", "virtual_open_qty"),
    ("exchange_open_orders", "created_at"), ("exchange_positions", "min_qty_step"),
])
def test_a_missing_column_is_a_shape_error_naming_it(frame, column):
    snap = snapshot(db_orders=[db_order("rc.P1.t1.E1")])
    snap[frame] = snap[frame].drop(columns=[column])
    with pytest.raises(SnapshotShapeError, match=column):
        diff(snap)


def test_bad_values_fail_loudly_instead_of_reading_as_zero():
    snap = snapshot(exchange_positions=[ex_position(1.0)])
    snap["exchange_positions"].loc[0, "qty"] = None
    with pytest.raises(SnapshotShapeError, match="exchange_positions.qty"):
        diff(snap)
    snap = snapshot(db_positions=[db_position("p1", 1.0, side="LONG")])
    with pytest.raises(SnapshotShapeError, match="db_positions.side"):
        diff(snap)
    snap = snapshot(db_orders=[db_order("rc.P1.t1.E1")])
    snap["db_orders"]["qty"] = snap["db_orders"]["qty"].astype(object)
    snap["db_orders"].loc[0, "qty"] = "one"
    with pytest.raises(SnapshotShapeError, match="db_orders.qty"):
        diff(snap)
    snap = snapshot(db_orders=[db_order("rc.P1.t1.E1")])
    snap["db_orders"]["updated_at"] = snap["db_orders"]["updated_at"].dt.tz_localize(None)
    with pytest.raises(SnapshotShapeError, match="timezone"):
        diff(snap)
    with pytest.raises(ValueError, match="db_read_at"):
        diff(snapshot(), db_read_at=pd.Timestamp("2024-06-01T12:00:00"))
    with pytest.raises(ValueError, match="recency_guard_s"):
        diff(snapshot(), recency_guard_s=-1)


def test_numbers_as_decimal_or_text_give_the_same_result_as_floats():
    d, _ = order_pair("rc.P1.t1.E1", "5", qty=1.5, price=100.0)
    e = ex_order("rc.P1.t1.E1", "5", qty=1.25, price=100.0)
    floats = snapshot(db_orders=[d], exchange_open_orders=[e],
                      db_positions=[db_position("p1", 1.0)], exchange_positions=[ex_position(2)])
    objects = {k: v.copy() for k, v in floats.items()}
    for col in ("qty", "filled_qty", "price"):
        objects["db_orders"][col] = [decimal.Decimal(str(v)) for v in floats["db_orders"][col]]
        objects["exchange_open_orders"][col] = [str(v) for v in
                                                floats["exchange_open_orders"][col]]
    objects["db_positions"]["qty"] = [decimal.Decimal("1.0")]
    pd.testing.assert_frame_equal(diff(floats), diff(objects))


def test_output_order_is_deterministic_whatever_the_input_order():
    pairs = [order_pair(f"rc.P1.t{i}.E1", str(i), symbol=(BTC, ETH)[i % 2]) for i in range(12)]
    db = [d for d, _ in pairs]
    ex = [e for _, e in pairs][3:] + [ex_order(f"web_{i}", f"w{i}") for i in range(3)]
    for e in ex[:4]:
        e["qty"] = 9.0
    snap = snapshot(db_orders=db, exchange_open_orders=ex,
                    db_trade_slices=[trade_slice("p1", f"s{i}", 1.0, symbol=ETH)
                                     for i in range(3)],
                    exchange_positions=[ex_position(0.0, side="flat", symbol=ETH)])
    first = diff(snap)
    assert len(first) == 3 + 3 + 4 + 3
    shuffled = {k: v.sample(frac=1.0, random_state=3).reset_index(drop=True)
                for k, v in snap.items()}
    pd.testing.assert_frame_equal(first, diff(shuffled))
    sort_cols = ["exchange_account", "symbol", "client_order_id"]
    for kind, rows in first.groupby("kind", sort=False):
        assert rows[sort_cols].fillna("").values.tolist() == \
            sorted(rows[sort_cols].fillna("").values.tolist())


def test_concurrent_calls_do_not_see_each_others_frames():
    from concurrent.futures import ThreadPoolExecutor

    snaps = [snapshot(db_orders=[db_order(f"rc.P1.t{i}.E{k}") for k in range(1, i + 2)])
             for i in range(6)]
    expected = [diff(s) for s in snaps]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda s: reconciliation_diff(**s, cycle_id="run-1",
                                                          db_read_at=READ_AT), snaps * 2))
    for i, result in enumerate(got):
        pd.testing.assert_frame_equal(result, expected[i % len(snaps)])


# --------------------------------------------------------------------------- benchmark honesty

def _benchmark_module():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "diff_benchmark.py"
    spec = importlib.util.spec_from_file_location("diff_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n, seed", [(400, 1), (2_000, 2)])
def test_benchmark_dict_loop_finds_the_same_order_mismatches_as_the_diff(n, seed):
    bench = _benchmark_module()
    data = bench.generate(n, seed=seed)
    result = bench.run_diff(data)
    loop = bench.dict_loop_order_mismatches(data)
    assert bench.diff_order_mismatches(result) == loop
    kinds = {row[0] for row in loop}
    assert kinds == {"missing_from_exchange", "missing_in_db", "status_drift", "qty_drift",
                     "price_drift"}  # the generator really drifts every order kind
    assert result.attrs["suppressed_recent"] > 0  # and exercises the recency guard
    assert {"position_drift", "ghost_slice"} <= set(result["kind"])


def test_an_order_placed_within_the_grace_is_not_missing_from_the_exchange_yet():
    """Issue 39: Binance may not list an order for a moment after it was placed (its query
    answers -2013). A DB order placed 10 s before the read, last changed then too (beyond the
    5 s recency guard), is held back this cycle under a 30 s grace, exactly at the grace's edge
    it is reported, and without a placing time it is reported."""
    placed = READ_AT - pd.Timedelta(seconds=10)
    young = db_order("rc.P1.t1.E1", updated_at=placed) | {"created_at": placed}
    held = diff(snapshot(db_orders=[young]), new_order_grace_s=30.0)
    assert held.empty and held.attrs["suppressed_recent_by_kind"] == {"missing_from_exchange": 1}
    assert held.attrs["not_fully_checked"] == {
        "p1": "held back by the recency guard: missing_from_exchange on BTC/USDT:USDT"}
    assert list(diff(snapshot(db_orders=[young]))["kind"]) == ["missing_from_exchange"]
    assert list(diff(snapshot(db_orders=[young]), new_order_grace_s=10.0)["kind"]) == [
        "missing_from_exchange"]
    unknown = young | {"created_at": None}
    assert list(diff(snapshot(db_orders=[unknown]), new_order_grace_s=30.0)["kind"]) == [
        "missing_from_exchange"]
    # Only its absence waits: a young order the exchange lists with another qty is reported.
    listed = ex_order("rc.P1.t1.E1", "e1", qty=2.0)
    assert list(diff(snapshot(db_orders=[young], exchange_open_orders=[listed]),
                     new_order_grace_s=30.0)["kind"]) == ["qty_drift"]
    with pytest.raises(ValueError, match="new_order_grace_s must be a number >= 0"):
        diff(snapshot(db_orders=[young]), new_order_grace_s=float("nan"))
