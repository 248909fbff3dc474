"""The lifecycle-safe handlers of migration 0005 against the real PostgreSQL: each correction
applies exactly once, atomically, under the profile's reconciliation lock; dry runs only record;
illegal transitions raise and leave nothing behind; concurrent connections and processes killed
with SIGKILL never produce a half-applied correction.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon_assets.core.corrections import (
    decide_missing_from_exchange,
    pg_locks_ids,
    profile_lock_key,
    sql_call,
)
from recon_assets_tests.db.functions.decisions import recorded_backfill, recorded_exit
from recon_assets_tests.harness.examples import examples

pytestmark = pytest.mark.db

SYMBOL = "BTC/USDT:USDT"
JSONB = {"p_fills", "p_evidence", "p_decisions"}
# Bounds for waiting on another process/connection to reach a state: hang guards, never asserted
# durations.
WAIT_S = 60


# --- helpers ---------------------------------------------------------------------------------

def add_order(conn, coid, *, trade="t1", intent="ENTRY", side="buy", qty="2", filled="0",
              status="open", exchange_id=None, avg=None, profile="alpha"):
    conn.execute(
        "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, "
        "exchange_order_id, status, qty, filled_qty, avg_fill_price) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (profile, trade, intent, SYMBOL, side, coid, exchange_id, status, Decimal(qty),
         Decimal(filled), None if avg is None else Decimal(avg)))


def add_slice(conn, trade, *, side="long", entry="0", exit_="0", price=None, profile="alpha",
              slice_no=1):
    conn.execute(
        "INSERT INTO trade_history (trade_id, slice_no, profile_id, symbol, side, entry_qty, "
        "exit_qty, entry_price) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (trade, slice_no, profile, SYMBOL, side, Decimal(entry), Decimal(exit_),
         None if price is None else Decimal(price)))


def add_position(conn, side, qty, avg, profile="alpha"):
    conn.execute("INSERT INTO positions (profile_id, symbol, side, qty, avg_price) "
                 "VALUES (%s, %s, %s, %s, %s)", (profile, SYMBOL, side, Decimal(qty), Decimal(avg)))


def call_sql(fn, params):
    args = ", ".join(f"{k} => %({k})s::jsonb" if k in JSONB else f"{k} => %({k})s"
                     for k in params)
    values = {k: json.dumps(v) if k in JSONB else v for k, v in params.items()}
    return f"SELECT public.{fn}({args})", values


def call(conn, fn, **params):
    query, values = call_sql(fn, params)
    return conn.execute(query, values).fetchone()[0]


def fills(*specs):
    """fills(("f1", "1.5", "100"), ...) as the handlers take them."""
    return [{"id": i, "qty": q, "price": p, "filled_at": "2026-01-01T00:00:00+00:00"}
            for i, q, p in specs]


def entry_params(key="k-entry", coid="rc.ALP.t1.E1", filled="2", avg="100", fill_list=None,
                 **extra):
    if fill_list is None:
        fill_list = fills(("f1", "1.5", "100"), ("f2", "0.5", "100"))
    return dict(p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key=key,
                p_client_order_id=coid, p_filled_qty=filled, p_avg_fill_price=avg,
                p_exchange_order_id="9001", p_fills=fill_list,
                p_evidence={"snapshot": "orders@run-1", "exchange_order_id": "9001"}, **extra)


def exit_params(key="k-exit", coid="rc.ALP.t1.X1", filled="2", avg="110", fill_list=None,
                **extra):
    if fill_list is None:
        fill_list = fills(("x1", filled, avg))
    return dict(p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key=key,
                p_client_order_id=coid, p_filled_qty=filled, p_avg_fill_price=avg,
                p_exchange_order_id="9002", p_fills=fill_list, **extra)


def cancel_params(key="k-cancel", coid="rc.ALP.t1.E1", **extra):
    return dict(p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key=key,
                p_client_order_id=coid, **extra)


TABLES = {
    "orders": "client_order_id",
    "trade_history": "trade_id, slice_no",
    "positions": "profile_id, symbol",
    "applied_fills": "exchange_fill_id",
    "capital_ledger": "profile_id, trade_id",
    "profiles": "id",
    "recon.corrections": "idempotency_key",
    "recon.reconciling": "profile_id",
}
VOLATILE = {"id", "updated_at", "applied_at", "closed_at", "created_at", "opened_at", "evidence",
            "started_at"}


def full_state(conn):
    """Every row of every table a correction may touch, timestamps included."""
    return {t: [r[0] for r in conn.execute(f"SELECT to_jsonb(x) FROM {t} x ORDER BY {order}")]
            for t, order in TABLES.items()}


def state(conn):
    """full_state without ids and times (comparable across equivalent applications)."""
    return {t: [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]
            for t, rows in full_state(conn).items()}


def rows(conn, sql, *args):
    return conn.execute(sql, args).fetchall()


def one(conn, sql, *args):
    return conn.execute(sql, args).fetchone()


def _state_if_applied(conn, fn, params):
    """The state a correction would produce, computed in a transaction that is rolled back."""
    result = {}
    with conn.transaction() as tx:
        call(conn, fn, **params)
        result["after"] = state(conn)
        raise psycopg.Rollback(tx)
    return result["after"]


def wait_for(predicate, what):
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


# --- the lock key ----------------------------------------------------------------------------

@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(profile_id=st.text(alphabet=st.characters(blacklist_characters="\x00",
                                                 blacklist_categories=("Cs",)),
                          min_size=1, max_size=40))
def test_lock_key_is_the_same_in_python_and_sql(pg_dsn, profile_id):
    with psycopg.connect(pg_dsn) as conn:
        (key,) = conn.execute("SELECT recon_profile_lock_key(%s)", (profile_id,)).fetchone()
    assert key == profile_lock_key(profile_id)


def test_lock_shows_in_pg_locks_under_the_documented_ids(pg_dsn):
    key = profile_lock_key("alpha")
    classid, objid = pg_locks_ids(key)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(recon_profile_lock_key('alpha'))")
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
            "AND objid = %s AND objsubid = 1 AND granted AND pid = pg_backend_pid()",
            (classid, objid)).fetchone()[0]
        conn.rollback()
    assert held == 1


# --- entry fill ------------------------------------------------------------------------------

def test_entry_fill_books_order_slice_position_fills_capital_and_record(db):
    add_order(db, "rc.ALP.t1.E1")
    result = call(db, "recon_reconcile_entry_fill", **entry_params())

    assert result["status"] == "applied"
    assert result["handler"] == "reconcile_entry_fill"
    assert result["fills"] == {"booked": ["f1", "f2"], "already_booked": []}
    order = one(db, "SELECT status, filled_qty, avg_fill_price, exchange_order_id FROM orders")
    assert order == ("filled", Decimal("2"), Decimal("100"), "9001")
    assert rows(db, "SELECT trade_id, slice_no, side, entry_qty, exit_qty, entry_price, status "
                    "FROM trade_history") == [("t1", 1, "long", 2, 0, 100, "open")]
    assert rows(db, "SELECT side, qty, avg_price FROM positions") == [("long", 2, 100)]
    assert rows(db, "SELECT exchange_account, symbol, exchange_fill_id, exchange_order_id, "
                    "client_order_id, trade_id, side, qty, price FROM applied_fills "
                    "ORDER BY exchange_fill_id") == [
        ("acct1", SYMBOL, "f1", "9001", "rc.ALP.t1.E1", "t1", "buy", Decimal("1.5"), 100),
        ("acct1", SYMBOL, "f2", "9001", "rc.ALP.t1.E1", "t1", "buy", Decimal("0.5"), 100)]
    assert rows(db, "SELECT profile_id, trade_id, reserved_usd FROM capital_ledger") == [
        ("alpha", "t1", 200)]
    (correction,) = rows(db, "SELECT idempotency_key, cycle_id, profile_id, handler, trade_id, "
                             "client_order_id, dry_run, evidence FROM recon.corrections")
    assert correction[:7] == ("k-entry", "run-1", "alpha", "reconcile_entry_fill", "t1",
                              "rc.ALP.t1.E1", False)
    evidence = correction[7]
    assert evidence["input"] == {"snapshot": "orders@run-1", "exchange_order_id": "9001"}
    assert evidence["request"]["filled_qty"] == 2
    assert evidence["change"]["order"]["before"]["status"] == "open"
    assert evidence["change"]["order"]["after"]["status"] == "filled"
    assert result["correction_id"] == one(db, "SELECT id FROM recon.corrections")[0]


def test_partial_then_full_entry_fill_weights_the_prices(db):
    add_order(db, "rc.ALP.t1.E1")
    add_slice(db, "t1")  # the trading app opened the slice before any fill
    first = call(db, "recon_reconcile_entry_fill",
                 **entry_params(key="k1", filled="1", avg="100",
                                fill_list=fills(("f1", "1", "100"))))
    assert first["status"] == "applied"
    assert one(db, "SELECT status, filled_qty FROM orders") == ("partially_filled", 1)
    assert one(db, "SELECT reserved_usd FROM capital_ledger")[0] == 100

    # The exchange later reports 2 filled at an average of 105: the second fill was at 110.
    second = call(db, "recon_reconcile_entry_fill",
                  **entry_params(key="k2", filled="2", avg="105",
                                 fill_list=fills(("f1", "1", "100"), ("f2", "1", "110"))))
    assert second["status"] == "applied"
    assert second["fills"] == {"booked": ["f2"], "already_booked": ["f1"]}
    assert one(db, "SELECT status, filled_qty, avg_fill_price FROM orders") == ("filled", 2, 105)
    assert one(db, "SELECT count(*), max(entry_qty), max(entry_price) FROM trade_history") == (
        1, 2, 105)
    assert one(db, "SELECT side, qty, avg_price FROM positions") == ("long", 2, 105)
    assert one(db, "SELECT reserved_usd FROM capital_ledger")[0] == 210
    assert one(db, "SELECT count(*) FROM applied_fills")[0] == 2


def test_sell_entry_opens_a_short_position(db):
    add_order(db, "rc.ALP.t1.E1", side="sell", qty="1")
    call(db, "recon_reconcile_entry_fill",
         **entry_params(filled="1", avg="50", fill_list=fills(("s1", "1", "50"))))
    assert one(db, "SELECT side, entry_qty, entry_price FROM trade_history") == ("short", 1, 50)
    assert one(db, "SELECT side, qty, avg_price FROM positions") == ("short", 1, 50)


def test_entry_fill_of_a_partly_cancelled_order_marks_it_cancelled(db):
    add_order(db, "rc.ALP.t1.E1", qty="2")
    result = call(db, "recon_reconcile_entry_fill",
                  **entry_params(filled="0.5", avg="100", fill_list=fills(("f1", "0.5", "100")),
                                 p_final_status="canceled"))
    assert result["status"] == "applied"
    assert one(db, "SELECT status, filled_qty FROM orders") == ("canceled", Decimal("0.5"))
    assert one(db, "SELECT entry_qty FROM trade_history")[0] == Decimal("0.5")


# --- a fill already booked is never booked again (issue 10, sequence 1) -----------------------

def add_applied_fill(conn, fill_id, qty, price, coid="rc.ALP.t1.E1", side="buy", trade="t1",
                     exchange_order_id="9001"):
    conn.execute(
        "INSERT INTO applied_fills (exchange_account, symbol, exchange_fill_id, exchange_order_id, "
        "client_order_id, profile_id, trade_id, side, qty, price, filled_at) "
        "VALUES ('acct1', %s, %s, %s, %s, 'alpha', %s, %s, %s, %s, now())",
        (SYMBOL, fill_id, exchange_order_id, coid, trade, side, Decimal(qty), Decimal(price)))


def test_a_fill_the_trading_app_booked_before_crashing_is_not_booked_again(db):
    """The trading app wrote applied_fills f1, the slice and the position, then crashed before
    updating orders.filled_qty; the exchange reports the order closed with f1."""
    add_order(db, "rc.ALP.t1.E1", qty="1", exchange_id="9001")
    add_applied_fill(db, "f1", "1", "100")
    add_slice(db, "t1", entry="1", price="100")
    add_position(db, "long", "1", "100")
    call(db, "recon_recalculate_capital", p_profile_id="alpha")
    before = full_state(db)
    with pytest.raises(psycopg.Error, match="contradicts itself") as err:
        call(db, "recon_reconcile_entry_fill",
             **entry_params(filled="1", avg="100", fill_list=fills(("f1", "1", "100"))))
    assert err.value.sqlstate == "RCREF"
    assert err.value.diag.message_detail == "fills_contradict_order"
    assert full_state(db) == before
    assert one(db, "SELECT entry_qty FROM trade_history")[0] == 1
    assert one(db, "SELECT qty FROM positions")[0] == 1
    assert one(db, "SELECT sum(qty) FROM applied_fills")[0] == 1


def test_a_booked_fill_the_exchange_does_not_report_stops_the_correction(db):
    add_order(db, "rc.ALP.t1.E1", status="partially_filled", filled="1", avg="100",
              exchange_id="9001")
    add_applied_fill(db, "f0", "1", "100")
    before = full_state(db)
    with pytest.raises(psycopg.Error) as err:
        call(db, "recon_reconcile_entry_fill",
             **entry_params(filled="2", avg="100",
                            fill_list=fills(("f1", "1", "100"), ("f2", "1", "100"))))
    assert err.value.sqlstate == "RCREF"
    assert err.value.diag.message_detail == "booked_fill_not_reported"
    assert full_state(db) == before


def test_the_amount_booked_is_the_fills_not_yet_booked(db):
    """orders.filled_qty and applied_fills agree on f1; the exchange adds f2: only f2 is booked,
    at its own price, whatever the exchange's rounded average says."""
    add_order(db, "rc.ALP.t1.E1", status="partially_filled", filled="1", avg="100",
              exchange_id="9001")
    add_applied_fill(db, "f1", "1", "100")
    add_slice(db, "t1", entry="1", price="100")
    add_position(db, "long", "1", "100")
    result = call(db, "recon_reconcile_entry_fill",
                  **entry_params(filled="2", avg="105.01",
                                 fill_list=fills(("f1", "1", "100"), ("f2", "1", "110"))))
    assert result["fills"] == {"booked": ["f2"], "already_booked": ["f1"]}
    assert one(db, "SELECT entry_qty, entry_price FROM trade_history") == (2, 105)
    assert one(db, "SELECT qty, avg_price FROM positions") == (2, 105)
    assert one(db, "SELECT count(*), sum(qty) FROM applied_fills") == (2, 2)


def test_a_fill_of_the_order_without_its_fills_is_refused(db):
    add_order(db, "rc.ALP.t1.E1", exchange_id="9001")
    with pytest.raises(psycopg.Error) as err:
        call(db, "recon_reconcile_entry_fill", **entry_params(fill_list=[]))
    assert err.value.sqlstate == "RCREF" and err.value.diag.message_detail == "fills_missing"


# --- exit fill -------------------------------------------------------------------------------

@pytest.fixture
def open_long(db):
    """Trade t1: a long slice of 2 at 100, its position and ledger row, an open EXIT order."""
    add_order(db, "rc.ALP.t1.E1", status="filled", filled="2", avg="100", exchange_id="9001")
    add_slice(db, "t1", entry="2", price="100")
    add_position(db, "long", "2", "100")
    call(db, "recon_recalculate_capital", p_profile_id="alpha")
    add_order(db, "rc.ALP.t1.X1", intent="EXIT", side="sell", qty="2")
    # The exit fill of a lost EXIT order, as recon stored it: the EXIT backfill's evidence.
    db.execute("INSERT INTO recon.exchange_fills (exchange_account, symbol, exchange_fill_id, "
               "exchange_order_id, client_order_id, side, qty, price, fee_usd, fee_asset, "
               "fee_amount, filled_at) VALUES ('acct1', %s, 'bf1', '9003', 'rc.ALP.t1.X2', "
               "'sell', 2, 110, 0.05, 'USDT', 0.05, '2026-01-01T00:00:00Z')", (SYMBOL,))
    return db


def test_exit_fill_closes_the_slice_and_removes_position_and_reservation(open_long):
    db = open_long
    result = call(db, "recon_reconcile_exit_fill", **exit_params())
    assert result["status"] == "applied"
    assert Decimal(str(result["realised_pnl_usd"])) == 20
    assert one(db, "SELECT status, filled_qty, avg_fill_price FROM orders "
                   "WHERE client_order_id = 'rc.ALP.t1.X1'") == ("filled", 2, 110)
    slice_ = one(db, "SELECT exit_qty, virtual_open_qty, exit_price, realised_pnl_usd, status, "
                     "closed_at IS NOT NULL, close_reason FROM trade_history")
    assert slice_ == (2, 0, 110, 20, "closed", True, "reconciled_exit_fill")
    assert rows(db, "SELECT * FROM positions") == []
    assert rows(db, "SELECT * FROM capital_ledger") == []
    assert rows(db, "SELECT exchange_fill_id, side, qty, price FROM applied_fills") == [
        ("x1", "sell", 2, 110)]
    assert rows(db, "SELECT handler, idempotency_key FROM recon.corrections") == [
        ("reconcile_exit_fill", "k-exit")]


def test_partial_exit_keeps_the_slice_open(open_long):
    db = open_long
    call(db, "recon_reconcile_exit_fill", **exit_params(filled="0.5", avg="120"))
    assert one(db, "SELECT status FROM orders WHERE client_order_id = 'rc.ALP.t1.X1'") == (
        "partially_filled",)
    assert one(db, "SELECT exit_qty, virtual_open_qty, exit_price, realised_pnl_usd, status, "
                   "closed_at FROM trade_history") == (Decimal("0.5"), Decimal("1.5"), 120, 10,
                                                       "open", None)
    assert one(db, "SELECT side, qty, avg_price FROM positions") == ("long", Decimal("1.5"), 100)
    assert one(db, "SELECT reserved_usd FROM capital_ledger")[0] == 150


def test_short_exit_books_pnl_the_other_way(db):
    add_slice(db, "t1", side="short", entry="1", price="100")
    add_position(db, "short", "1", "100")
    add_order(db, "rc.ALP.t1.X1", intent="EXIT", side="buy", qty="1")
    result = call(db, "recon_reconcile_exit_fill",
                  **exit_params(filled="1", avg="90", p_close_reason="exit_fill_backfilled"))
    assert Decimal(str(result["realised_pnl_usd"])) == 10
    assert one(db, "SELECT status, realised_pnl_usd, close_reason FROM trade_history") == (
        "closed", 10, "exit_fill_backfilled")
    assert rows(db, "SELECT * FROM positions") == []


# --- cancel ----------------------------------------------------------------------------------

def test_cancel_changes_only_the_order_status(open_long):
    db = open_long
    before = state(db)
    result = call(db, "recon_reconcile_cancel",
                  **cancel_params(coid="rc.ALP.t1.X1", p_filled_qty="0",
                                  p_exchange_order_id="9002"))
    assert result["status"] == "applied"
    after = state(db)
    changed = {t for t in TABLES if before[t] != after[t]}
    assert changed == {"orders", "recon.corrections"}
    assert one(db, "SELECT status, exchange_order_id FROM orders "
                   "WHERE client_order_id = 'rc.ALP.t1.X1'") == ("canceled", "9002")
    assert one(db, "SELECT reserved_usd FROM capital_ledger")[0] == 200


def test_cancel_of_a_partially_filled_order_keeps_its_fills(db):
    add_order(db, "rc.ALP.t1.E1", status="partially_filled", filled="0.5", avg="100")
    call(db, "recon_reconcile_cancel", **cancel_params(p_filled_qty="0.5",
                                                       p_final_status="expired"))
    assert one(db, "SELECT status, filled_qty FROM orders") == ("expired", Decimal("0.5"))


# --- exactly once ----------------------------------------------------------------------------

@pytest.mark.parametrize("handler", ["entry", "exit", "cancel"])
def test_the_same_correction_twice_applies_once(open_long, handler):
    db = open_long
    add_order(db, "rc.ALP.t2.E1", trade="t2")
    fn, params = {
        "entry": ("recon_reconcile_entry_fill", entry_params(coid="rc.ALP.t2.E1")),
        "exit": ("recon_reconcile_exit_fill", exit_params()),
        "cancel": ("recon_reconcile_cancel", cancel_params(coid="rc.ALP.t2.E1")),
    }[handler]
    first = call(db, fn, **params)
    after_first = full_state(db)
    second = call(db, fn, **params)
    assert first["status"] == "applied"
    assert second["status"] == "already_applied"
    assert second["correction_id"] == first["correction_id"]
    assert second["cycle_id"] == "run-1"
    assert full_state(db) == after_first


def test_the_same_evidence_under_another_key_books_nothing_twice(open_long):
    db = open_long
    assert call(db, "recon_reconcile_exit_fill", **exit_params(key="cycle-a"))["status"] == "applied"
    after_first = full_state(db)
    again = call(db, "recon_reconcile_exit_fill", **exit_params(key="cycle-b"))
    assert again["status"] == "unchanged"
    assert again["correction_id"] is None
    assert full_state(db) == after_first


def test_a_key_reused_by_another_handler_is_refused(open_long):
    db = open_long
    call(db, "recon_reconcile_exit_fill", **exit_params(key="k"))
    with pytest.raises(psycopg.errors.RaiseException, match="already used by reconcile_exit_fill"):
        call(db, "recon_reconcile_cancel", **cancel_params(key="k", coid="rc.ALP.t1.X1"))


# --- dry run ---------------------------------------------------------------------------------

def test_dry_run_records_the_would_be_change_and_changes_nothing_else(open_long):
    db = open_long
    before = full_state(db)
    result = call(db, "recon_reconcile_exit_fill", **exit_params(p_dry_run=True))
    assert result["status"] == "dry_run"
    assert result["idempotency_key"] == "k-exit:dry-run"
    assert result["slice"]["after"]["status"] == "closed"  # what a real run would do
    assert result["position"]["after"] is None
    after = full_state(db)
    assert {t: after[t] for t in TABLES if t != "recon.corrections"} == {
        t: before[t] for t in TABLES if t != "recon.corrections"}
    (record,) = rows(db, "SELECT idempotency_key, dry_run, handler, evidence->'change'->'slice'"
                         "->'after'->>'status' FROM recon.corrections")
    assert record == ("k-exit:dry-run", True, "reconcile_exit_fill", "closed")
    # The sequences of the rolled-back rows are not state; the record is all that stays.


def test_dry_run_then_real_run_then_dry_run(open_long):
    db = open_long
    assert call(db, "recon_reconcile_exit_fill", **exit_params(p_dry_run=True))["status"] == "dry_run"
    again = call(db, "recon_reconcile_exit_fill", **exit_params(p_dry_run=True))
    assert again["status"] == "already_applied" and again["dry_run"] is True
    real = call(db, "recon_reconcile_exit_fill", **exit_params())
    assert real["status"] == "applied"  # the dry run did not take the real key
    late_dry = call(db, "recon_reconcile_exit_fill", **exit_params(p_dry_run=True))
    assert late_dry["status"] == "already_applied" and late_dry["dry_run"] is False
    assert rows(db, "SELECT idempotency_key, dry_run FROM recon.corrections ORDER BY id") == [
        ("k-exit:dry-run", True), ("k-exit", False)]
    assert one(db, "SELECT status FROM trade_history")[0] == "closed"


def test_dry_run_keys_are_reserved(db):
    add_order(db, "rc.ALP.t1.E1")
    with pytest.raises(psycopg.errors.RaiseException, match="reserved suffix"):
        call(db, "recon_reconcile_cancel", **cancel_params(key="k:dry-run"))


# --- illegal transitions ---------------------------------------------------------------------

ILLEGAL = {
    "cancel a filled order": (
        "recon_reconcile_cancel", lambda: cancel_params(coid="rc.ALP.t1.E1"),
        r"cannot mark order rc\.ALP\.t1\.E1 \(trade t1\) canceled because it is filled"),
    "exit more than open": (
        "recon_reconcile_exit_fill",
        lambda: exit_params(coid="rc.ALP.t1.X2", filled="3", avg="110",
                            fill_list=fills(("x0", "0.5", "110"), ("x1", "2.5", "110"))),
        r"exit fill of 2\.5 on order rc\.ALP\.t1\.X2 exceeds the open qty 2"),
    "unknown order": (
        "recon_reconcile_cancel", lambda: cancel_params(coid="rc.ALP.nope.E1"),
        r"unknown order rc\.ALP\.nope\.E1"),
    "entry handler on an exit order": (
        "recon_reconcile_entry_fill", lambda: entry_params(coid="rc.ALP.t1.X1", filled="1",
                                                           fill_list=[]),
        r"order rc\.ALP\.t1\.X1 \(trade t1\) is an EXIT order"),
    "another profile's order": (
        "recon_reconcile_cancel", lambda: {**cancel_params(coid="rc.BET.b1.E1")},
        r"order rc\.BET\.b1\.E1 belongs to profile beta, not to profile alpha"),
    "fills that do not add up": (
        "recon_reconcile_exit_fill",
        lambda: exit_params(filled="2", fill_list=fills(("x1", "1", "110"))),
        r"order rc\.ALP\.t1\.X1: its fills add up to 1"),
    "a fill booked to another order": (
        "recon_reconcile_exit_fill",
        lambda: exit_params(fill_list=fills(("e1", "2", "110"))),
        r"fill e1 \(BTC/USDT:USDT\) is already booked to order rc\.ALP\.t1\.E1, not to order "
        r"rc\.ALP\.t1\.X1"),
    "more filled than the order qty": (
        "recon_reconcile_entry_fill", lambda: entry_params(coid="rc.ALP.t3.E1", filled="5",
                                                           fill_list=[]),
        r"reports 5 filled for order rc\.ALP\.t3\.E1, more than its qty 1"),
    "less filled than booked": (
        "recon_reconcile_exit_fill",
        lambda: exit_params(coid="rc.ALP.t1.X2", filled="0.1", fill_list=[]),
        r"reports 0\.1 filled for order rc\.ALP\.t1\.X2, less than the 0\.5"),
    "cancel with unbooked fills": (
        "recon_reconcile_cancel", lambda: cancel_params(coid="rc.ALP.t1.X1", p_filled_qty="1"),
        r"order rc\.ALP\.t1\.X1: the exchange reports 1 filled but the database booked 0"),
}


@pytest.mark.parametrize("case", list(ILLEGAL))
def test_illegal_transitions_raise_naming_the_order_and_leave_nothing(open_long, case):
    db = open_long
    db.execute("INSERT INTO applied_fills (exchange_account, symbol, exchange_fill_id, "
               "client_order_id, profile_id, trade_id, side, qty, price, filled_at) VALUES "
               "('acct1', %s, 'e1', 'rc.ALP.t1.E1', 'alpha', 't1', 'buy', 2, 100, now())",
               (SYMBOL,))
    add_order(db, "rc.ALP.t1.X2", intent="EXIT", side="sell", qty="3",
              status="partially_filled", filled="0.5", avg="110")
    add_applied_fill(db, "x0", "0.5", "110", coid="rc.ALP.t1.X2", side="sell")
    add_order(db, "rc.ALP.t3.E1", trade="t3", qty="1")
    add_order(db, "rc.BET.b1.E1", trade="b1", profile="beta")
    fn, params, message = ILLEGAL[case]
    before = full_state(db)
    with pytest.raises(psycopg.errors.RaiseException, match=message):
        call(db, fn, **params())
    assert full_state(db) == before


def test_a_failure_inside_a_callers_transaction_rolls_the_whole_correction_back(open_long):
    """The CHECK constraints are the last line: a correction that passes the handler's checks but
    violates one (here, a trading-app row made inconsistent on purpose) still leaves nothing."""
    db = open_long
    db.execute("ALTER TABLE positions ADD CONSTRAINT test_cap CHECK (qty <> 1.5) NOT VALID")
    before = full_state(db)
    with pytest.raises(psycopg.errors.CheckViolation):
        call(db, "recon_reconcile_exit_fill", **exit_params(filled="0.5", avg="120"))
    assert full_state(db) == before


# --- capital ledger --------------------------------------------------------------------------

def test_recalculate_capital_reserves_open_trades_and_drops_closed_ones(db):
    add_slice(db, "t1", entry="2", price="100")
    add_slice(db, "t1", entry="1", exit_="0.5", price="120", slice_no=2)
    add_slice(db, "t2", side="short", entry="3", exit_="3", price="10")
    db.execute("UPDATE trade_history SET status = 'closed', closed_at = now() WHERE trade_id = 't2'")
    add_slice(db, "b1", entry="1", price="7", profile="beta")
    db.execute("INSERT INTO capital_ledger (profile_id, trade_id, reserved_usd) VALUES "
               "('alpha', 't2', 30), ('alpha', 't1', 1), ('beta', 'b1', 99)")
    result = call(db, "recon_recalculate_capital", p_profile_id="alpha")
    assert result["open_trades"] == 1 and result["rows_removed"] == 1
    assert Decimal(str(result["reserved_usd"])) == 260
    assert rows(db, "SELECT profile_id, trade_id, reserved_usd FROM capital_ledger "
                    "ORDER BY profile_id") == [("alpha", "t1", 260), ("beta", "b1", 99)]


# --- reconciling state -----------------------------------------------------------------------

def trading_state(db, profile="alpha"):
    return one(db, "SELECT trading_state, pause_source FROM profiles WHERE id = %s", profile)


def test_begin_and_end_reconciling_restore_active(db):
    began = call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-1")
    assert began["trading_state"] == "reconciling" and began["previous_state"] == "active"
    assert trading_state(db) == ("reconciling", None)
    assert rows(db, "SELECT profile_id, cycle_id FROM recon.reconciling") == [("alpha", "run-1")]
    ended = call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-1")
    assert ended["restored"] is True
    assert trading_state(db) == ("active", None)
    assert rows(db, "SELECT * FROM recon.reconciling") == []
    # Idempotent: ending again changes nothing.
    assert call(db, "recon_end_reconciling", p_profile_id="alpha")["restored"] is False
    assert trading_state(db) == ("active", None)


def test_a_paused_profile_stays_paused(db):
    db.execute("UPDATE profiles SET trading_state = 'paused', pause_source = 'parity watchdog', "
               "paused_at = now() WHERE id = 'alpha'")
    assert call(db, "recon_begin_reconciling", p_profile_id="alpha")["trading_state"] == "paused"
    call(db, "recon_end_reconciling", p_profile_id="alpha")
    assert trading_state(db) == ("paused", "parity watchdog")
    # Paused by the watchdog while reconciling: end does not override the pause.
    db.execute("UPDATE profiles SET trading_state = 'active', pause_source = NULL WHERE id = 'beta'")
    call(db, "recon_begin_reconciling", p_profile_id="beta", p_cycle_id="run-2")
    db.execute("UPDATE profiles SET trading_state = 'paused', pause_source = 'parity watchdog' "
               "WHERE id = 'beta'")
    assert call(db, "recon_end_reconciling", p_profile_id="beta", p_cycle_id="run-2")[
        "restored"] is False
    assert trading_state(db, "beta") == ("paused", "parity watchdog")


def test_a_crash_between_begin_and_end_is_repaired_by_the_next_run(db):
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-crashed")
    # run-crashed dies here. The next run, having seen it is dead, takes the session over...
    took = call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-next",
                p_take_over_from="run-crashed")
    assert took["took_over"] is True
    # ...a late end from the crashed run does not cut the new run's session short...
    late = call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-crashed")
    assert late["restored"] is False
    assert trading_state(db) == ("reconciling", None)
    # ...and the new run's end restores trading.
    assert call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-next")[
        "restored"] is True
    assert trading_state(db) == ("active", None)


def test_a_second_run_cannot_take_the_gate_from_a_live_owner(db):
    """Issue 10, sequence 4: overlapping runs. The second run is refused while the first owns the
    reconciling state, so it can neither correct nor end the first run's session."""
    assert call(db, "recon_begin_reconciling", p_profile_id="alpha",
                p_cycle_id="run-a")["status"] == "began"
    second = call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-b")
    assert second["status"] == "busy" and second["owner"] == "run-a"
    assert rows(db, "SELECT cycle_id FROM recon.reconciling") == [("run-a",)]
    assert call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-b")[
        "restored"] is False
    assert trading_state(db) == ("reconciling", None)
    # A take-over names the owner it replaces: a stale name changes nothing.
    stale = call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-b",
                 p_take_over_from="run-z")
    assert stale["status"] == "busy"
    assert call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-a")[
        "restored"] is True
    assert trading_state(db) == ("active", None)


def test_only_the_gates_owner_corrects_the_profile(open_long):
    """A run that does not own the profile's reconciling gate (it lost it to a take-over, or
    never had it) corrects nothing while another run owns it; a dry run only records."""
    db = open_long
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-owner")
    before = full_state(db)
    with pytest.raises(psycopg.Error) as err:
        call(db, "recon_reconcile_exit_fill", **{**exit_params(), "p_cycle_id": "run-other"})
    assert err.value.sqlstate == "RCREF"
    assert err.value.diag.message_detail == "gate_owned_by_another_run"
    assert full_state(db) == before
    assert call(db, "recon_reconcile_exit_fill", **{**exit_params(p_dry_run=True),
                                                   "p_cycle_id": "run-other"})["status"] == "dry_run"
    assert call(db, "recon_reconcile_exit_fill",
                **{**exit_params(), "p_cycle_id": "run-owner"})["status"] == "applied"


def test_unknown_profile_is_refused(db):
    with pytest.raises(psycopg.errors.RaiseException, match="unknown profile ghost"):
        call(db, "recon_begin_reconciling", p_profile_id="ghost")


# --- from a decision to the database ---------------------------------------------------------

def test_a_decision_applies_through_sql_call_and_through_the_store(open_long, pg_dsn):
    db = open_long
    order = dict(zip(
        ("profile_id", "trade_id", "client_order_id", "intent", "side", "qty", "filled_qty",
         "exchange_order_id", "symbol", "status"),
        one(db, "SELECT profile_id, trade_id, client_order_id, intent, side, qty, filled_qty, "
                "exchange_order_id, symbol, status FROM orders "
                "WHERE client_order_id = 'rc.ALP.t1.X1'")))
    probe = {"id": "9002", "clientOrderId": "rc.ALP.t1.X1", "status": "closed", "filled": 2.0,
             "average": 110.0, "amount": 2.0}
    trades = [{"id": "x1", "order": "9002", "amount": 1.5, "price": 110.0, "side": "sell",
               "timestamp": 1767225600000, "fee": {"cost": 0.05, "currency": "USDT"}},
              {"id": "x2", "order": "9002", "amount": 0.5, "price": 110.0, "side": "sell",
               "timestamp": 1767225601000, "fee": {"cost": 0.01, "currency": "USDT"}}]
    decision = decide_missing_from_exchange(order, probe, trades, cycle_id="run-7")
    assert decision.handler == "reconcile_exit_fill"
    query, params = sql_call(decision)
    result = db.execute(query, params).fetchone()[0]
    assert result["status"] == "applied"
    assert one(db, "SELECT status FROM trade_history")[0] == "closed"
    assert rows(db, "SELECT exchange_fill_id, fee_usd FROM applied_fills ORDER BY 1") == [
        ("x1", Decimal("0.05")), ("x2", Decimal("0.01"))]
    # The same decision through PostgresStore.call (the rpc()-shaped path) is already applied.
    from recon_assets.resources.database import PostgresStore
    again = PostgresStore(dsn=pg_dsn).call(decision.sql_function, dict(decision.params))
    assert again["status"] == "already_applied"
    assert again["correction_id"] == result["correction_id"]


# --- concurrency -----------------------------------------------------------------------------

def _run_threads(pg_dsn, n, params_for):
    results, errors = [None] * n, []

    def worker(i):
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                results[i] = call(conn, "recon_reconcile_entry_fill", **params_for(i))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    return threads, results, errors


def _waiters(conn, key):
    classid, objid = pg_locks_ids(key)
    return conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
        "AND objid = %s AND objsubid = 1 AND NOT granted", (classid, objid)).fetchone()[0]


@pytest.mark.parametrize("same_key", [True, False], ids=["same-key", "key-per-cycle"])
def test_eight_concurrent_connections_queue_on_the_lock_and_apply_once(db, pg_dsn, same_key):
    add_order(db, "rc.ALP.t1.E1")
    key = profile_lock_key("alpha")
    threads, results, errors = _run_threads(
        pg_dsn, 8, lambda i: entry_params(key="k-entry" if same_key else f"k-cycle-{i}"))
    with psycopg.connect(pg_dsn) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (key,))  # someone is reconciling
        for t in threads:
            t.start()
        try:
            wait_for(lambda: _waiters(db, key) == 8 or errors,
                     "eight connections waiting on the reconciliation lock")
            assert not errors, errors
            # While the lock is held, nothing was applied.
            assert one(db, "SELECT count(*) FROM recon.corrections")[0] == 0
            assert one(db, "SELECT status FROM orders")[0] == "open"
        finally:
            holder.rollback()  # releases the lock; the eight go through one at a time
        for t in threads:
            t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    statuses = collections.Counter(r["status"] for r in results)
    assert statuses == ({"applied": 1, "already_applied": 7} if same_key
                        else {"applied": 1, "unchanged": 7})
    assert one(db, "SELECT count(*) FROM recon.corrections")[0] == 1
    assert one(db, "SELECT status, filled_qty FROM orders") == ("filled", 2)
    assert one(db, "SELECT count(*), sum(entry_qty) FROM trade_history") == (1, 2)
    assert one(db, "SELECT qty FROM positions")[0] == 2
    assert one(db, "SELECT count(*), sum(qty) FROM applied_fills") == (2, 2)
    assert one(db, "SELECT reserved_usd FROM capital_ledger")[0] == 200


def test_the_lock_is_per_profile(db, pg_dsn):
    """A held lock on one profile does not hold up another profile's correction."""
    add_order(db, "rc.BET.b1.E1", trade="b1", profile="beta", qty="1")
    add_order(db, "rc.ALP.a9.E1", trade="a9", profile="alpha", qty="1")
    # A wait for a lock fails in 2 s instead of hanging the suite, should the lock regress.
    db.execute("SET lock_timeout = '2s'")
    with psycopg.connect(pg_dsn) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (profile_lock_key("alpha"),))
        result = call(db, "recon_reconcile_cancel",
                      **{**cancel_params(coid="rc.BET.b1.E1"), "p_profile_id": "beta"})
        # The held lock is alpha's, and it does hold up alpha's own correction.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            call(db, "recon_reconcile_cancel", **cancel_params(key="k-a9", coid="rc.ALP.a9.E1"))
        holder.rollback()
    assert result["status"] == "applied"
    assert one(db, "SELECT status FROM orders WHERE client_order_id = 'rc.ALP.a9.E1'") == ("open",)


# --- synthetic exit -------------------------------------------------------------------------

def synthetic_params(db, key="synthetic_exit:alpha:t1:1:k", **extra):
    """The arguments of the synthetic exit of t1 (2 at 90), with the heartbeat check that
    decided it recorded (p_check_id) unless one is given."""
    if "p_check_id" not in extra:
        extra["p_check_id"] = recorded_exit(db, key=key)
    return dict(p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key=key,
                p_trade_id="t1", p_slice_no=1, p_qty="2", p_price="90", **extra)


def exit_order_cancelled(db):
    """open_long without its open EXIT order (cancelled): a slice a synthetic exit may close."""
    db.execute("UPDATE orders SET status = 'canceled' WHERE client_order_id = 'rc.ALP.t1.X1'")
    return db


def test_no_synthetic_exit_while_the_trade_has_an_open_exit_order(open_long):
    """Real evidence first: the EXIT order the database holds open may have filled (the
    lifecycle correction books it at its real price); the synthetic exit is refused until the
    lifecycle resolved it, and changes nothing."""
    db = open_long
    params = synthetic_params(db)
    before = full_state(db)
    with pytest.raises(psycopg.Error) as err:
        call(db, "recon_synthetic_exit", **params)
    assert err.value.sqlstate == "RCREF" and err.value.diag.message_detail == "exit_order_open"
    assert "rc.ALP.t1.X1" in err.value.diag.message_primary
    assert full_state(db) == before
    exit_order_cancelled(db)
    assert call(db, "recon_synthetic_exit", **params)["status"] == "applied"


def test_a_synthetic_exit_a_newer_check_superseded_changes_nothing(open_long):
    """Act on the newest evidence: the exit was decided in check 1; a newer check of the slice
    cleared it (the position is back): the exit is not applied."""
    db = exit_order_cancelled(open_long)
    key = "synthetic_exit:alpha:t1:1:k"
    decided = recorded_exit(db, key=key, cycle="c-synthetic_exit")
    recorded_exit(db, key=key, cycle="c-cleared", decision="cleared")
    before = full_state(db)
    result = call(db, "recon_synthetic_exit", **synthetic_params(db, p_check_id=decided))
    assert result["status"] == "unchanged" and "superseded" in result["reason"]
    assert "cleared" in result["reason"] and full_state(db) == before
    # A still newer check decided the same exit (the same streak, so the same key): applied.
    recorded_exit(db, key=key, cycle="c-again")
    assert call(db, "recon_synthetic_exit",
                **synthetic_params(db, p_check_id=decided))["status"] == "applied"


def test_a_synthetic_exit_closes_the_slice_at_the_price_with_a_synthetic_fill(open_long):
    db = exit_order_cancelled(open_long)
    params = synthetic_params(db)
    result = call(db, "recon_synthetic_exit", **params)
    assert result["status"] == "applied" and result["handler"] == "synthetic_exit"
    assert one(db, "SELECT status, exit_qty, exit_price, realised_pnl_usd, close_reason "
                   "FROM trade_history") == ("closed", 2, 90, -20, "parity_synthetic_exit")
    assert rows(db, "SELECT * FROM positions") == [] and rows(db, "SELECT * FROM capital_ledger") == []
    assert rows(db, "SELECT exchange_fill_id, side, qty, price, fee_usd, client_order_id "
                    "FROM applied_fills") == [
        ("synthetic:synthetic_exit:alpha:t1:1:k", "sell", 2, 90, 0, None)]
    assert call(db, "recon_synthetic_exit", **params)["status"] == "already_applied"
    # Under another key (a later streak, its own check), a closed slice is left as it is.
    again = call(db, "recon_synthetic_exit",
                 **synthetic_params(db, key="synthetic_exit:alpha:t1:1:other"))
    assert again["status"] == "unchanged"


@pytest.mark.parametrize("change,detail", [
    ("UPDATE trade_history SET exit_qty = 0.5", "slice_changed"),
    ("UPDATE positions SET qty = 1", "position_would_flip"),
    ("DELETE FROM positions", "position_would_flip"),
])
def test_a_synthetic_exit_that_the_database_contradicts_is_refused(open_long, change, detail):
    db = exit_order_cancelled(open_long)
    db.execute(change)
    params = synthetic_params(db)
    before = full_state(db)
    with pytest.raises(psycopg.Error) as err:
        call(db, "recon_synthetic_exit", **params)
    assert err.value.sqlstate == "RCREF" and err.value.diag.message_detail == detail
    assert full_state(db) == before


@pytest.mark.parametrize("invented,detail", [
    ({"p_check_id": None}, "no_recorded_decision"),  # no decision named
    ({"p_check_id": 999999}, "no_recorded_decision"),  # no such check
    ({"p_trade_id": "t1", "p_idempotency_key": "synthetic_exit:alpha:t1:1:mine"},
     "no_recorded_decision"),  # a key the check did not decide
    ({"p_price": "1"}, "not_the_recorded_decision"),  # another price than the recorded mark
    ({"p_qty": "1"}, "not_the_recorded_decision"),  # another qty than the one checked
])
def test_a_synthetic_exit_with_invented_arguments_is_refused(open_long, invented, detail):
    """Issue 38: the money function trusts the recorded decision, not its caller: a close of
    any slice at any price is refused unless the heartbeat recorded that very exit."""
    db = exit_order_cancelled(open_long)
    params = {**synthetic_params(db), **invented}
    before = full_state(db)
    with pytest.raises(psycopg.Error) as err:
        call(db, "recon_synthetic_exit", **params)
    assert err.value.sqlstate == "RCREF" and err.value.diag.message_detail == detail
    assert full_state(db) == before
    # A check that decided something else (cleared) is no decision to exit either.
    other = recorded_exit(db, key="synthetic_exit:alpha:t1:1:k", decision="cleared")
    with pytest.raises(psycopg.Error) as err:
        call(db, "recon_synthetic_exit", **synthetic_params(db, p_check_id=other))
    assert err.value.diag.message_detail == "no_recorded_decision"


# --- SIGKILL ---------------------------------------------------------------------------------

CHILD = r"""
import json, sys, time
import psycopg
dsn, mode, query, values = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
conn = psycopg.connect(dsn, autocommit=(mode == "mid_statement_autocommit"))
print("backend", conn.info.backend_pid, flush=True)
conn.execute(query, values)
if mode == "committed":
    conn.commit()
print("returned", flush=True)
time.sleep(3600)
"""


def _backend_gone(conn, pid):
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()[0] == 0


def _waiting_on_a_lock(conn, pid):
    row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                       (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


SIGKILLED = {
    # A real exit fill of t1's EXIT order, and the heartbeat's synthetic exit of t1's slice.
    "exit_fill": ("recon_reconcile_exit_fill", lambda _db: exit_params()),
    "synthetic_exit": ("recon_synthetic_exit", lambda db: dict(
        p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key="synthetic_exit:alpha:t1:1:k",
        p_trade_id="t1", p_slice_no=1, p_qty="2", p_price="110",
        p_check_id=recorded_exit(db, key="synthetic_exit:alpha:t1:1:k", price="110"),
        p_evidence={"check_id": 1}, p_exited_at="2026-01-01T00:00:00+00:00")),
    # The EXIT backfill of t1's slice from the stored fill bf1 (open_long).
    "exit_backfill": ("recon_exit_backfill", lambda db: dict(
        p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key="exit_backfill:alpha:t1:1:k",
        p_trade_id="t1", p_slice_no=1, p_symbol=SYMBOL, p_exchange_fill_id="bf1",
        p_decision_id=recorded_backfill(db, "bf1"), p_evidence={"decision_id": 1})),
}


@pytest.mark.parametrize("handler", list(SIGKILLED))
@pytest.mark.parametrize("mode", ["in_transaction", "mid_statement_in_transaction",
                                  "mid_statement_autocommit", "committed"])
def test_sigkill_leaves_the_database_before_or_after_never_in_between(open_long, pg_dsn, mode,
                                                                      handler):
    db = open_long
    # Another open trade on the symbol, with its reservation: the exit of t1 recalculates it.
    add_slice(db, "t0", entry="1", price="50")
    db.execute("UPDATE positions SET qty = 3, avg_price = 250.0 / 3")
    call(db, "recon_recalculate_capital", p_profile_id="alpha")
    function, make_params = SIGKILLED[handler]
    params = make_params(db)
    if handler == "synthetic_exit":  # no synthetic exit while an EXIT order is open
        exit_order_cancelled(db)
    before = state(db)
    after = _state_if_applied(db, function, params)
    assert state(db) == before and after != before
    assert [r["status"] for r in after["trade_history"]] == ["open", "closed"]

    query, values = call_sql(function, params)
    blocker = psycopg.connect(pg_dsn)
    proc = None
    try:
        if mode.startswith("mid_statement"):
            # Hold t0's ledger row: the handler stops inside recon_recalculate_capital, after it
            # changed the order, the slice, the position and the fills.
            blocker.execute("SELECT * FROM capital_ledger WHERE trade_id = 't0' FOR UPDATE")
        proc = subprocess.Popen([sys.executable, "-c", CHILD, pg_dsn, mode, query,
                                 json.dumps(values)], stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline().split()
        assert line[0] == "backend", line
        backend = int(line[1])
        if mode.startswith("mid_statement"):
            wait_for(lambda: _waiting_on_a_lock(db, backend), "the handler to block mid-way")
        else:
            assert proc.stdout.readline().strip() == "returned"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(WAIT_S)
        blocker.rollback()  # let a still-running backend finish the statement it was given
        wait_for(lambda: _backend_gone(db, backend), "the killed client's backend to end")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(WAIT_S)
        blocker.close()

    outcome = state(db)
    if mode == "committed":
        assert outcome == after
    elif mode == "mid_statement_autocommit":
        # The statement was its own transaction: whether it commits depends on whether the
        # server read the whole request before the client died. Either way, all or nothing.
        assert outcome in (before, after)
    else:
        assert outcome == before
    # Nothing is stuck: the lock is free and the correction applies (or is already applied).
    final = call(db, function, **params)
    assert final["status"] == ("applied" if outcome == before else "already_applied")
    assert state(db) == after


# --- privileges ------------------------------------------------------------------------------

def test_handlers_are_not_callable_by_public(db):
    role = f"recon_nobody_{os.getpid()}"
    db.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        allowed = dict(db.execute(
            "SELECT p.proname, has_function_privilege(%s, p.oid, 'EXECUTE') FROM pg_proc p "
            "WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'recon\\_%%' "
            "AND p.proname IN ('recon_reconcile_entry_fill', 'recon_reconcile_exit_fill', "
            "'recon_reconcile_cancel', 'recon_recalculate_capital', 'recon_begin_reconciling', "
            "'recon_end_reconciling', 'recon_profile_lock_key')", (role,)).fetchall())
    finally:
        db.execute(f"DROP ROLE {role}")
    assert allowed == {"recon_reconcile_entry_fill": False, "recon_reconcile_exit_fill": False,
                       "recon_reconcile_cancel": False, "recon_recalculate_capital": False,
                       "recon_begin_reconciling": False, "recon_end_reconciling": False,
                       "recon_profile_lock_key": True}


def test_supabase_roles_get_the_documented_privileges(empty_pg_dsn):
    """On Supabase: service_role (supabase-py's rpc() with the service key) may call the handlers
    and write what they write in schema recon; anon and authenticated may not call them."""
    from recon_assets.db.migrate import migrate

    roles = ("anon", "authenticated", "service_role")
    with psycopg.connect(empty_pg_dsn, autocommit=True) as conn:
        existing = {r[0] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(roles),))}
        created = [r for r in roles if r not in existing]
        for role in created:
            conn.execute(f"CREATE ROLE {role} NOLOGIN")
        try:
            migrate(empty_pg_dsn)
            fn = "public.recon_reconcile_exit_fill(text,text,text,text,numeric,numeric,text,jsonb,text,text,boolean,jsonb)"
            can = {r: conn.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')",
                                   (r, fn)).fetchone()[0] for r in roles}
            writes = conn.execute(
                "SELECT has_schema_privilege('service_role', 'recon', 'USAGE'), "
                "has_table_privilege('service_role', 'recon.corrections', 'INSERT'), "
                "has_table_privilege('service_role', 'recon.corrections', 'UPDATE'), "
                "has_table_privilege('service_role', 'recon.reconciling', 'DELETE')").fetchone()
        finally:
            for role in created:
                conn.execute(f"DROP OWNED BY {role}")
                conn.execute(f"DROP ROLE {role}")
    assert can == {"anon": False, "authenticated": False, "service_role": True}
    assert writes == (True, True, False, True)  # corrections stay append-only


def test_a_refused_call_is_recorded_in_the_server_log_with_its_role(open_long, pg_server):
    """Issue 38: a call with invented arguments is refused, and the refusal rolls back with the
    caller's transaction, so no table can keep it; the database server's log does, which no
    role of the database can erase: the role and database, the refusal, its reason and the
    statement (log_min_error_statement is `error` by default; Supabase keeps the same log)."""
    db = exit_order_cancelled(open_long)
    log = pg_server.log_path
    start = log.stat().st_size
    with pytest.raises(psycopg.Error):
        call(db, "recon_synthetic_exit", **{**synthetic_params(db), "p_check_id": 424242})
    lines = log.read_bytes()[start:].decode(errors="replace").splitlines()
    mine = [i for i, line in enumerate(lines) if f" {db.info.user}@{db.info.dbname} ERROR:" in line]
    assert mine, lines
    told = "\n".join(lines[mine[-1]:mine[-1] + 4])
    assert "DETAIL:  no_recorded_decision" in told and "recon_synthetic_exit" in told, told
