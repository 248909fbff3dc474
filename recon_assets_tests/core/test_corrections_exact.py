"""Every decision of core.corrections exactly, field by field: the reason and the operator's
words of each `none`, the handler's whole SQL arguments and evidence, and the helpers' edges.
These are the tests mutation testing (`make mutants MODULE=corrections`) measures the module
by: a changed word, argument or bound fails one of them."""

import datetime as dt
import json
from decimal import Decimal

import ccxt
import numpy as np
import pandas as pd
import pytest

from recon_assets.core import corrections as C
from recon_assets.core.corrections import (CANCEL, ENTRY_FILL, EXIT_FILL, NONE,
                                           CorrectionDecision, ProbeFailure,
                                           decide_missing_from_exchange, decide_missing_in_db,
                                           idempotency_key)
from recon_assets_tests.core.test_corrections import TWO_FILLS, decide, order, probe, trade

pytestmark = pytest.mark.unit

COID = "rc.ALP.t1.E1"
FILL_1 = {"id": "f1", "qty": "1.5", "price": "100", "fee_asset": "USDT", "fee_amount": "0.01",
          "fee_usd": "0.01", "filled_at": "2026-01-01T00:00:00+00:00"}
FILL_2 = {"id": "f2", "qty": "0.5", "price": "100", "fee_asset": "USDT", "fee_amount": "0.01",
          "fee_usd": "0.01", "filled_at": "2026-01-01T00:01:00+00:00"}


def nothing(reason, detail, coid=COID):
    return CorrectionDecision(NONE, reason, "alpha", "t1", coid, detail=detail)


# --------------------------------------------------------------------------- nothing decided

ODD_FILL = trade("f2", 0.5, price=None)


@pytest.mark.parametrize("o,p,fills,expected", [
    (order(), ProbeFailure("not_found", "gone", beyond_retention=True), [], nothing(
        "beyond_exchange_query_retention",
        f"the exchange no longer answers for order {COID} (created beyond its query retention: "
        "90 days, or 3 days when cancelled without a fill); an operator settles it from the "
        "exchange's own records")),
    (order(filled_qty=0.5), ProbeFailure("not_found", "gone", full_history=True), [], nothing(
        "not_found_but_database_booked_fills",
        f"the exchange has no order {COID} in its full history, but the database booked 0.5 "
        "filled")),
    (order(), ProbeFailure("network_error", "reset"), [], nothing("probe_network_error", "reset")),
    (order(), ProbeFailure("not_found", "-2013"), [],
     nothing("probe_not_found_without_full_history", "-2013")),
    (order(), ProbeFailure("error", "bad key"), [], nothing("probe_failed", "bad key")),
    (order(), probe(clientOrderId="rc.ALP.t9.E1"), TWO_FILLS,
     nothing("probe_mismatch", "the probe answered for client order id rc.ALP.t9.E1")),
    (order(), probe(id="777"), TWO_FILLS,
     nothing("probe_mismatch", "the probe answered for exchange order 777, the database has "
                               "9001")),
    (order(), probe(status="open"), TWO_FILLS, nothing(
        "exchange_reports_open", "the exchange still has the order open; the next cycle checks "
                                 "again")),
    (order(), probe(status="pending"), TWO_FILLS,
     nothing("unknown_probe_status", "exchange status 'pending'")),
    (order(), probe(filled=None), TWO_FILLS,
     nothing("incomplete_probe", "the probe carries no usable filled qty (None)")),
    (order(), probe(filled=-1.0), TWO_FILLS,
     nothing("incomplete_probe", "the probe carries no usable filled qty (-1.0)")),
    (order(), probe(filled=3.0), TWO_FILLS,
     nothing("exchange_filled_exceeds_order_qty", "exchange filled 3 > order qty 2")),
    (order(filled_qty=1.0), probe(filled=0.5), TWO_FILLS,
     nothing("exchange_filled_less_than_database", "exchange filled 0.5 < database filled 1")),
    (order(), probe(status="rejected", filled=1.0), [trade("f1", 1.0)],
     nothing("inconsistent_probe", "a rejected order with 1 filled")),
    (order(), probe(filled=1.0), [trade("f1", 1.0)],
     nothing("closed_but_not_fully_filled", "status closed with 1 of 2 filled")),
    (order(), probe(), [], nothing(
        "fills_missing", "evidence first: the order's fills are needed to book them")),
    (order(), probe(), [trade("f1", 1.5)],
     nothing("fills_do_not_add_up", "fills add up to 1.5, the exchange reports 2")),
    (order(), probe(), [trade("f1", 1.5), trade("f1", 0.5)],
     nothing("duplicate_fill_ids", "fill f1 appears twice")),
    (order(), probe(), [trade("f1", 1.5), trade("f2", 0.5, order="777")],
     nothing("fill_of_another_order", "fill f2 belongs to exchange order 777")),
    (order(), probe(), [trade("f1", 1.5), {**{k: v for k, v in trade("f2", 0.5).items()
                                              if k != "order"}, "exchange_order_id": "778"}],
     nothing("fill_of_another_order", "fill f2 belongs to exchange order 778")),
    (order(), probe(), [trade("f1", 1.5), trade("f2", 0.5, clientOrderId="web_1")],
     nothing("fill_of_another_order", "fill f2 belongs to client order id web_1")),
    (order(), probe(), [trade("f1", 1.5), trade("f2", 0.5, side="sell")],
     nothing("fill_side_mismatch", "fill f2 is a sell, the order a buy")),
    (order(), probe(), [trade("f1", 1.5), ODD_FILL], nothing(
        "incomplete_fill", f"a fill lacks an id, a qty > 0 or a price: {ODD_FILL!r}")),
    (order(), probe(average=None), [trade("f1", 1.5, price=0.0), trade("f2", 0.5, price=0.0)],
     nothing("incomplete_probe", "no average fill price in the probe or its fills")),
    # What the database booked has an average, but the exchange filled more: the fills' zero
    # prices cannot be booked at the database's old average.
    (order(filled_qty=1.0, avg_fill_price=99.0), probe(average=None),
     [trade("f1", 1.5, price=0.0), trade("f2", 0.5, price=0.0)],
     nothing("incomplete_probe", "no average fill price in the probe or its fills")),
])
def test_a_decision_that_decides_nothing_says_exactly_why(o, p, fills, expected):
    assert decide(o, p, fills) == expected


@pytest.mark.parametrize("fill", [
    trade(None, 1.0), trade("f1", 0.0), trade("f1", -1.0), trade("f1", 1.0, price=-1.0),
    {"id": "f1", "price": 100.0},
])
def test_a_fill_without_an_id_a_positive_qty_or_a_price_is_incomplete(fill):
    d = decide(order(qty=1.0), probe(filled=1.0, amount=1.0), [fill])
    assert (d.handler, d.reason) == (NONE, "incomplete_fill")


def test_a_fill_at_price_zero_is_complete():
    """A zero price is a price (the average then comes from the probe)."""
    d = decide(order(qty=1.0), probe(filled=1.0, amount=1.0), [trade("f1", 1.0, price=0.0)])
    assert (d.handler, d.params["p_avg_fill_price"]) == (ENTRY_FILL, "100")


# --------------------------------------------------------------------------- what is applied

FULL_ORDER = order(exchange_account="A", price=100.0, avg_fill_price=None,
                   created_at=pd.Timestamp("2026-01-01T00:00:00Z"),
                   updated_at=dt.datetime(2026, 1, 1, 0, 1, tzinfo=dt.timezone.utc))
DB_ORDER = {"avg_fill_price": None, "client_order_id": COID,
            "created_at": "2026-01-01T00:00:00+00:00", "exchange_account": "A",
            "exchange_order_id": "9001", "filled_qty": 0.0, "intent": "ENTRY", "price": 100.0,
            "profile_id": "alpha", "qty": 2.0, "side": "buy", "status": "open",
            "symbol": "BTC/USDT:USDT", "trade_id": "t1",
            "updated_at": "2026-01-01T00:01:00+00:00"}


def test_an_entry_fill_is_exact_in_every_argument_and_its_evidence():
    p = probe(remaining=0.0, timestamp=1767225600000, lastTradeTimestamp=1767225660000,
              info={"raw": "not summarised"})
    fills = [trade("f1", 1.5), trade("f2", 0.5, timestamp=1767225660000)]
    key = "reconcile_entry_fill:alpha:rc.ALP.t1.E1:706caabb0612db0013a918d9677f56bf"
    assert key == idempotency_key(ENTRY_FILL, "alpha", "t1", COID, ["f2", "f1"],
                                  "filled=2;status=closed")
    expected = CorrectionDecision(
        ENTRY_FILL, "exchange_closed_fully_filled", "alpha", "t1", COID, key, {
            "p_profile_id": "alpha", "p_cycle_id": "run-1", "p_idempotency_key": key,
            "p_client_order_id": COID, "p_filled_qty": "2", "p_avg_fill_price": "100",
            "p_exchange_order_id": "9001", "p_fills": [FILL_1, FILL_2], "p_final_status": None,
            "p_dry_run": False,
            "p_evidence": {
                "snapshot": "s1", "decided_by": "recon_assets.core.corrections",
                "rule": "exchange_closed_fully_filled", "db_order": DB_ORDER,
                "probe": {"id": "9001", "clientOrderId": COID, "symbol": "BTC/USDT:USDT",
                          "side": "buy", "status": "closed", "amount": 2.0, "filled": 2.0,
                          "remaining": 0.0, "average": 100.0, "timestamp": 1767225600000,
                          "lastTradeTimestamp": 1767225660000},
                "fills": [FILL_1, FILL_2]}},
        detail="reconcileEntryFill for rc.ALP.t1.E1: 2 filled at 100 (closed)")
    assert decide(FULL_ORDER, p, fills, evidence={"snapshot": "s1"}) == expected


def test_an_exit_fill_of_a_cancelled_order_is_exact():
    """An EXIT order cancelled after 1 of 2 filled, decided in a dry run: the exit handler, with
    the close reason, the exchange's final status and the average of its fills."""
    o = order(client_order_id="rc.ALP.t1.X1", intent="EXIT", side="sell")
    p = probe(clientOrderId="rc.ALP.t1.X1", status="canceled", filled=1.0, average=None,
              side="sell")
    fills = [trade("f1", 0.25, price=100.0, side="sell", fee=None),
             trade("f2", 0.75, price=104.0, side="sell", fee=None)]
    d = decide(o, p, fills, dry_run=True, cycle_id="run-9")
    key = idempotency_key(EXIT_FILL, "alpha", "t1", "rc.ALP.t1.X1", ["f1", "f2"],
                          "filled=1;status=canceled")
    assert (d.handler, d.reason, d.idempotency_key) == (
        EXIT_FILL, "exchange_canceled_partially_filled", key)
    assert d.detail == "reconcileExitFill for rc.ALP.t1.X1: 1 filled at 103 (canceled)"
    assert {k: v for k, v in d.params.items() if k != "p_evidence"} == {
        "p_profile_id": "alpha", "p_cycle_id": "run-9", "p_idempotency_key": key,
        "p_client_order_id": "rc.ALP.t1.X1", "p_filled_qty": "1", "p_avg_fill_price": "103",
        "p_exchange_order_id": "9001",
        "p_fills": [{"id": "f1", "qty": "0.25", "price": "100",
                     "filled_at": "2026-01-01T00:00:00+00:00"},
                    {"id": "f2", "qty": "0.75", "price": "104",
                     "filled_at": "2026-01-01T00:00:00+00:00"}],
        "p_final_status": "canceled", "p_dry_run": True,
        "p_close_reason": "reconciled_exit_fill"}


@pytest.mark.parametrize("average,expected", [
    (0.5, "0.5"),  # the probe's own average, however far from the fills'
    (105.0, "105"),
    (0.0, "100"),  # no average (0): the fills' average
    (None, "100"),
])
def test_the_average_is_the_probe_s_unless_it_has_none(average, expected):
    d = decide(order(), probe(average=average), TWO_FILLS)
    assert d.params["p_avg_fill_price"] == expected


def test_a_status_only_fill_keeps_the_database_s_average():
    """Closed with exactly what the database booked and no fills nor average in the probe: the
    fill handler only sets the status, at the average the database has."""
    d = decide(order(filled_qty=2.0, avg_fill_price=99.0), probe(average=None), [])
    assert (d.handler, d.reason, d.params["p_avg_fill_price"], d.params["p_fills"]) == (
        ENTRY_FILL, "exchange_closed_fully_filled", "99", [])


@pytest.mark.parametrize("qty,fills,adds_up", [
    (2.0, [trade("f1", "1.999999998")], True),  # 2e-9 off, the tolerance at 2: 1e-9 x 2
    (2.0, [trade("f1", "1.9999999979")], False),
    (1.0, [trade("f1", "0.9999999985")], False),  # 1.5e-9 off, the tolerance at 1: 1e-9
    (1.0, [trade("f1", "0.999999999")], True),
])
def test_fills_add_up_within_a_billionth_of_the_filled_qty_at_least_one(qty, fills, adds_up):
    d = decide(order(qty=qty), probe(filled=qty, amount=qty), fills)
    assert (d.handler, d.reason) == ((ENTRY_FILL, "exchange_closed_fully_filled") if adds_up
                                     else (NONE, "fills_do_not_add_up")), d


def test_a_cancel_is_exact_with_the_evidence_of_its_probe():
    o = {**FULL_ORDER, "filled_qty": 0.5}
    p = probe(status="expired", filled=0.5, average=100.0, id="9001")
    key = idempotency_key(CANCEL, "alpha", "t1", COID, (),
                          "filled=0.5;status=expired;rule=exchange_expired")
    d = decide(o, p, [], evidence={"snapshot": "s2"}, cycle_id="run-3")
    assert d == CorrectionDecision(
        CANCEL, "exchange_expired", "alpha", "t1", COID, key, {
            "p_profile_id": "alpha", "p_cycle_id": "run-3", "p_idempotency_key": key,
            "p_client_order_id": COID, "p_exchange_order_id": "9001", "p_filled_qty": "0.5",
            "p_final_status": "expired", "p_dry_run": False,
            "p_evidence": {
                "snapshot": "s2", "decided_by": "recon_assets.core.corrections",
                "rule": "exchange_expired", "db_order": {**DB_ORDER, "filled_qty": 0.5},
                "probe": {"id": "9001", "clientOrderId": COID, "symbol": "BTC/USDT:USDT",
                          "side": "buy", "status": "expired", "amount": 2.0, "filled": 0.5,
                          "average": 100.0}}},
        detail="reconcileCancel for rc.ALP.t1.E1: expired with 0.5 filled")


def test_a_cancel_in_a_dry_run_of_an_order_the_database_has_no_exchange_id_for():
    d = decide(order(exchange_order_id=None), probe(status="canceled", filled=0.0), [],
               dry_run=True)
    assert (d.handler, d.params["p_dry_run"], d.params["p_exchange_order_id"]) == (
        CANCEL, True, "9001")


def test_a_rejected_order_with_nothing_filled_is_cancelled_as_rejected():
    d = decide(order(), probe(status="rejected", filled=0.0), [])
    assert (d.handler, d.reason, d.params["p_final_status"]) == (
        CANCEL, "exchange_rejected", "rejected")


def test_not_found_in_the_full_history_cancels_with_that_evidence():
    d = decide(FULL_ORDER, ProbeFailure("not_found", "gone", full_history=True), [],
               dry_run=True, evidence={"snapshot": "s3"})
    key = idempotency_key(CANCEL, "alpha", "t1", COID, (),
                          "filled=0;status=canceled;rule=not_found_with_full_history")
    assert d == CorrectionDecision(
        CANCEL, "not_found_with_full_history", "alpha", "t1", COID, key, {
            "p_profile_id": "alpha", "p_cycle_id": "run-1", "p_idempotency_key": key,
            "p_client_order_id": COID, "p_exchange_order_id": "9001", "p_filled_qty": "0",
            "p_final_status": "canceled", "p_dry_run": True,
            "p_evidence": {"snapshot": "s3", "decided_by": "recon_assets.core.corrections",
                           "rule": "not_found_with_full_history", "db_order": DB_ORDER,
                           "probe": {"failure": "not_found", "message": "gone",
                                     "full_history": True}}},
        detail="reconcileCancel for rc.ALP.t1.E1: canceled with 0 filled")


def test_a_probe_with_an_empty_id_or_client_order_id_is_the_database_s_order():
    """ccxt leaves fields it did not get empty: an empty id names no other order."""
    d = decide(order(), probe(id="", clientOrderId=""), TWO_FILLS)
    assert (d.handler, d.params["p_exchange_order_id"]) == (ENTRY_FILL, "9001")
    cancelled = decide(order(filled_qty=0.0), probe(id="", status="canceled", filled=0.0), [])
    assert cancelled.params["p_exchange_order_id"] == "9001"


def test_a_triggered_conditional_order_is_booked_under_the_algo_order():
    d = decide(order(exchange_order_id="A55"), probe(id="9001", algoId="A55"), TWO_FILLS)
    assert d.params["p_exchange_order_id"] == "A55"
    assert d.params["p_evidence"]["triggered_as_order"] == "9001"
    cancelled = decide(order(exchange_order_id="A55"),
                       probe(id="9001", algoId="A55", status="canceled", filled=0.0), [])
    assert cancelled.params["p_exchange_order_id"] == "A55"
    other = decide(order(exchange_order_id="A55"), probe(id="9001", algoId=""), TWO_FILLS)
    assert other.reason == "probe_mismatch"


def test_a_fill_row_of_the_snapshot_names_its_order_and_fee_in_its_own_columns():
    """Stored exchange_fills rows: exchange_fill_id, qty, exchange_order_id, client_order_id,
    fee_asset / fee_amount / fee_usd and filled_at, instead of ccxt's names."""
    row = {"exchange_fill_id": "f1", "qty": 2.0, "price": 100.0, "side": "buy",
           "exchange_order_id": "9001", "client_order_id": COID, "fee_asset": "BNB",
           "fee_amount": 0.001, "fee_usd": 0.6,
           "filled_at": pd.Timestamp("2026-01-01T00:00:00Z")}
    d = decide(order(), probe(), [row])
    assert d.params["p_fills"] == [{"id": "f1", "qty": "2", "price": "100", "fee_asset": "BNB",
                                    "fee_amount": "0.001", "fee_usd": "0.6",
                                    "filled_at": "2026-01-01T00:00:00+00:00"}]
    unpriced = {**row, "fee_usd": None, "fee_amount": float("nan"), "fee_asset": None}
    assert decide(order(), probe(), [unpriced]).params["p_fills"] == [
        {"id": "f1", "qty": "2", "price": "100", "filled_at": "2026-01-01T00:00:00+00:00"}]
    for other in ({**row, "exchange_order_id": "778"}, {**row, "client_order_id": "web_1"}):
        assert decide(order(), probe(), [other]).reason == "fill_of_another_order"


def test_a_ccxt_fee_in_another_asset_is_priced_at_the_price_given_for_its_fill():
    bnb = trade("f1", 2.0, fee={"cost": 0.001, "currency": "BNB"})
    priced = decide(order(), probe(), [bnb], fee_prices={"f1": 600})
    assert priced.params["p_fills"][0] | {"filled_at": None} == {
        "id": "f1", "qty": "2", "price": "100", "fee_asset": "BNB", "fee_amount": "0.001",
        "fee_usd": "0.6", "filled_at": None}
    unpriced = decide(order(), probe(), [bnb], fee_prices={"f9": 600})
    assert "fee_usd" not in unpriced.params["p_fills"][0]


@pytest.mark.parametrize("value,expected", [
    (1767225600000, "2026-01-01T00:00:00+00:00"),
    (Decimal("1767225600000"), "2026-01-01T00:00:00+00:00"),
    (dt.datetime(2026, 1, 1), "2026-01-01T00:00:00+00:00"),
    (dt.datetime(2026, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
     "2026-01-01T01:00:00+01:00"),
    (pd.Timestamp("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00+00:00"),
    (dt.date(2026, 1, 1), "2026-01-01"),
    ("2026-01-01 00:00", "2026-01-01 00:00"),
    (None, None), (float("nan"), None),
])
def test_a_fill_s_time_in_each_form_it_comes_in(value, expected):
    assert C._timestamp({"filled_at": value}) == expected
    assert C._timestamp({"timestamp": value}) == expected


# --------------------------------------------------------------------------- exchange orders

def test_an_exchange_order_missing_in_the_database_is_exactly_flagged_or_reported():
    flagged = decide_missing_in_db({"clientOrderId": "rc.ALP.t7.X2"}, {"ALP": "alpha"})
    assert flagged == CorrectionDecision(
        NONE, "attributable_missing_in_db_flagged", "alpha", "t7", "rc.ALP.t7.X2",
        detail="exchange order rc.ALP.t7.X2 belongs to profile alpha, trade t7 (EXIT); not in "
               "the database: an operator decides whether to adopt it")
    assert decide_missing_in_db({"client_order_id": "rc.ALP.t7.X2", "clientOrderId": "x"},
                                {"ALP": "alpha"}).profile_id == "alpha"
    foreign = decide_missing_in_db({"client_order_id": "web_1"}, {"ALP": "alpha"})
    assert foreign == CorrectionDecision(
        NONE, "foreign_order_reported", None, None, "web_1",
        detail="exchange order 'web_1' is not attributable to a profile of this account")
    for missing in (None, "", float("nan")):
        assert decide_missing_in_db({"client_order_id": missing}, {}) == CorrectionDecision(
            NONE, "foreign_order_reported", None, None, None,
            detail="exchange order None is not attributable to a profile of this account")


# --------------------------------------------------------------------------- keys, orders, errors

def test_the_key_of_a_correction_never_changes_between_releases():
    assert idempotency_key(CANCEL, "alpha", "t1", COID, ["f2", "f1", "f1"], "q") == \
        "reconcile_cancel:alpha:rc.ALP.t1.E1:" + C.hashlib.sha256(
            '["recon-correction/v1","reconcile_cancel","alpha","t1","rc.ALP.t1.E1",'
            '["f1","f2"],"q"]'.encode()).hexdigest()[:32]
    assert idempotency_key(CANCEL, "α", "t1", COID) == "reconcile_cancel:α:rc.ALP.t1.E1:" + \
        C.hashlib.sha256('["recon-correction/v1","reconcile_cancel","α","t1","rc.ALP.t1.E1",'
                         '[],""]'.encode()).hexdigest()[:32]
    with pytest.raises(ValueError, match="unknown handler 'x'; expected one of "
                                         "reconcile_entry_fill, reconcile_exit_fill, "
                                         "reconcile_cancel"):
        idempotency_key("x", "alpha", "t1", COID)


@pytest.mark.parametrize("bad", ["", None, 7])
def test_a_profile_lock_needs_a_profile_id(bad):
    with pytest.raises(ValueError, match="a profile id is a non-empty string, not "):
        C.profile_lock_key(bad)


@pytest.mark.parametrize("over,message", [
    ({"trade_id": None, "side": ""}, f"order '{COID}' lacks trade_id, side"),
    ({"intent": "HEDGE"}, f"order {COID}: intent must be ENTRY or EXIT, not 'HEDGE'"),
    ({"side": "long"}, f"order {COID}: side must be buy or sell, not 'long'"),
    ({"qty": 0}, f"order {COID}: bad qty/filled_qty (0, 0.0)"),
    ({"qty": "x"}, f"order {COID}: bad qty/filled_qty ('x', 0.0)"),
    ({"filled_qty": -1}, f"order {COID}: bad qty/filled_qty (2.0, -1)"),
    ({"filled_qty": "y"}, f"order {COID}: bad qty/filled_qty (2.0, 'y')"),
])
def test_an_order_row_that_cannot_be_decided_on_says_what_is_wrong(over, message):
    with pytest.raises(ValueError) as err:
        decide(order(**over), probe(), TWO_FILLS)
    assert str(err.value) == message


def test_an_order_without_filled_qty_has_nothing_filled():
    row = {k: v for k, v in order().items() if k != "filled_qty"}
    assert decide(row, probe(), TWO_FILLS).params["p_filled_qty"] == "2"
    assert decide(order(filled_qty=None), probe(), TWO_FILLS).handler == ENTRY_FILL
    cancelled = decide(row, probe(status="canceled", filled=0.0), [])
    assert (cancelled.handler, cancelled.params["p_filled_qty"]) == (CANCEL, "0")


def test_a_probe_that_is_neither_a_result_nor_a_failure_is_a_programming_error():
    with pytest.raises(TypeError, match="not list"):
        decide_missing_from_exchange(order(), [], cycle_id="c")


def test_a_probe_exception_keeps_its_class_and_message():
    failure = ProbeFailure.from_exception(ccxt.OrderNotFound("-2013"), full_history=True)
    assert failure == ProbeFailure("not_found", "OrderNotFound: -2013", True)
    assert ProbeFailure.from_exception(ccxt.NetworkError("reset"), full_history=True) == \
        ProbeFailure("network_error", "NetworkError: reset", False)
    assert ProbeFailure.from_exception(ccxt.OrderNotFound("-2013")).full_history is False
    # By name, whatever ccxt's class tree: each is a network error on its own.
    for name in ("RequestTimeout", "DDoSProtection", "RateLimitExceeded", "ExchangeNotAvailable",
                 "InvalidNonce", "OnMaintenance", "ConnectionError", "JSONDecodeError"):
        exc = type(name, (Exception,), {})("x")
        assert ProbeFailure.from_exception(exc).kind == "network_error", name


@pytest.mark.parametrize("days,filled,beyond", [
    (90, 0.5, False), (90.001, 0.5, True), (3, 0, False), (3.001, 0, True), (3.001, 0.1, False),
    (3.001, Decimal("0"), True), (90 + 5 / 86_400_000, 0.5, True),
])
def test_the_query_retention_at_its_edges(days, filled, beyond):
    now = 10**13
    assert C.beyond_query_retention(now - round(days * 86_400_000), now, filled) is beyond


# --------------------------------------------------------------------------- refusals, locks

class _SqlError(Exception):
    """psycopg's error as refusal_of reads it: sqlstate, and diag.message_detail (a diag
    without it: another driver's error)."""

    def __init__(self, text, sqlstate, detail=None, diag=True):
        super().__init__(text)
        self.sqlstate = sqlstate
        self.diag = type("Diag", (), {"message_detail": detail})() if diag else object()


@pytest.mark.parametrize("exc,expected", [
    (_SqlError("refused\nCONTEXT: x", "RCREF", "no_recorded_decision"),
     C.Refusal("refused", "no_recorded_decision", "refused")),
    (_SqlError("refused", "RCREF"), C.Refusal("refused", "refused_by_handler", "refused")),
    (_SqlError("refused", "RCREF", diag=None),
     C.Refusal("refused", "refused_by_handler", "refused")),
    (_SqlError("illegal", "P0001"), C.Refusal("refused", "refused_by_handler", "illegal")),
    (_SqlError("dup", "23505"), C.Refusal("refused", "constraint_violated", "dup")),
    (_SqlError("x" * 1200, "40001"),
     C.Refusal("failed", "unexpected_error", "_SqlError: " + "x" * 1000)),
    (ValueError("bad row"), C.Refusal("refused", "bad_order_row", "bad row")),
    (TypeError("bad type"), C.Refusal("refused", "bad_order_row", "bad type")),
    (KeyError("k"), C.Refusal("failed", "unexpected_error", "KeyError: 'k'")),
    (RuntimeError(""), C.Refusal("failed", "unexpected_error", "RuntimeError: RuntimeError")),
])
def test_why_a_correction_was_not_applied_exactly(exc, expected):
    assert C.refusal_of(exc) == expected


@pytest.mark.parametrize("context,expected", [
    ("SQL statement \"SELECT pg_advisory_xact_lock(...)\"", ("reconciliation_lock", "profile")),
    ("PL/pgSQL function recon._lock_profile(text) line 3", ("reconciliation_lock", "profile")),
    ('while locking tuple (0,1) in relation "orders"', ("row_lock", "orders")),
    ("while locking a tuple", ("row_lock", None)),
    (None, ("row_lock", None)),
])
def test_which_lock_a_timeout_waited_for_exactly(context, expected):
    assert C.lock_wait_of(context) == expected


def test_the_backoff_after_many_refusals_is_capped():
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert C.retry_after_refusals(10**6, at) == at + dt.timedelta(
        seconds=C.REFUSAL_BACKOFF_MAX_SECONDS)


# --------------------------------------------------------------------------- values

@pytest.mark.parametrize("value,missing", [
    (None, True), (float("nan"), True), ("", True), (pd.NA, True), (pd.NaT, True),
    (np.float64("nan"), True), (Decimal("NaN"), True), (0, False), (0.0, False), ("0", False), (" ", False),
    (False, False), (np.array([1, 2]), False),
])
def test_what_counts_as_missing(value, missing):
    assert C._is_missing(value) is missing


@pytest.mark.parametrize("value,expected", [
    (1.1, Decimal("1.1")), ("2.50", Decimal("2.50")), (np.float64(0.1), Decimal("0.1")),
    (np.int64(3), Decimal("3")), (Decimal("4"), Decimal("4")), (True, None), (None, None),
    ("abc", None), (float("inf"), None), ("NaN", None), ("", None),
])
def test_an_exact_decimal_or_none(value, expected):
    result = C._dec(value)
    assert result == expected and (result is None) is (expected is None)
    if expected is not None:
        assert str(result) == str(expected)


@pytest.mark.parametrize("value,text", [
    (Decimal("1.00"), "1"), (Decimal("-0.0"), "0"), (Decimal("0E-8"), "0"),
    (Decimal("1E+2"), "100"), (Decimal("-1.50"), "-1.5"), (Decimal("0.000001"), "0.000001"),
])
def test_a_decimal_as_plain_text(value, text):
    assert C._num(value) == text


@pytest.mark.parametrize("value,expected", [
    (None, None), (float("nan"), None), (Decimal("2.50"), "2.5"),
    (dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "2026-01-01T00:00:00+00:00"),
    (dt.date(2026, 1, 1), "2026-01-01"), (pd.Timestamp("2026-01-01T00:00:00Z"),
                                          "2026-01-01T00:00:00+00:00"),
    ({"a": Decimal("1"), 2: [Decimal("0.5"), None]}, {"a": "1", "2": ["0.5", None]}),
    ((1, "x"), [1, "x"]), (np.int64(7), 7), (np.float64(0.5), 0.5), ("s", "s"), (3, 3),
    (True, True), (b"raw", "b'raw'"), (object, "<class 'object'>"),
])
def test_what_evidence_json_holds(value, expected):
    result = C._jsonable(value)
    assert result == expected and type(result) is type(expected)


def test_sql_call_spells_the_query():
    d = decide(order(), probe(), TWO_FILLS)
    query, params = C.sql_call(d)
    assert query.startswith("SELECT public.recon_reconcile_entry_fill(p_profile_id => "
                            "%(p_profile_id)s, p_cycle_id => %(p_cycle_id)s, ")
    assert "p_fills => %(p_fills)s::jsonb" in query and query.endswith(") AS result")
    assert params["p_profile_id"] == "alpha" and params["p_dry_run"] is False
    assert json.loads(params["p_fills"]) == d.params["p_fills"]
    with pytest.raises(ValueError, match="decision 'fills_missing' applies nothing"):
        C.sql_call(decide(order(), probe(), []))
