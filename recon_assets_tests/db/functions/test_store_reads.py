"""The store methods of WatchdogStore, BackfillStore, FillStore and TradingTables, each one SQL
function reached through `PostgresStore.call` (as supabase-py's rpc() reaches it), against the
real PostgreSQL: the values they return and their Python types are what the callers used before
the functions existed (floats stay float, timestamps come back as datetime, exact numbers as
exact text, numbers stored through float8 as psycopg stored them)."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pandas as pd
import pytest

from recon_assets.core.backfill import Review
from recon_assets.core.exchange_snapshot import Cursor
from recon_assets.resources.backfill_store import BackfillStore
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.fill_store import FillStore
from recon_assets.resources.trading_tables import TradingTables
from recon_assets.resources.watchdog_store import WatchdogStore

pytestmark = pytest.mark.db

SYMBOL = "BTC/USDT:USDT"
PAUSED_AT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
RESUMED_AT = datetime(2026, 1, 1, 0, 0, tzinfo=timezone.utc)
FILLED_AT = datetime(2026, 1, 3, 0, 5, tzinfo=timezone.utc)


@pytest.fixture
def store(pg_dsn):
    return PostgresStore(dsn=pg_dsn)


@pytest.fixture
def gated(db):
    """alpha paused by the watchdog (acct1), beta active (acct1), gamma on acct2."""
    db.execute("UPDATE profiles SET trading_state = 'paused', pause_source = 'parity_watchdog', "
               "paused_at = %s, last_auto_resume_at = %s WHERE id = 'alpha'",
               (PAUSED_AT, RESUMED_AT))
    db.execute("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) "
               "VALUES ('gamma', 'acct2', 'GAM', 2000)")
    return db


def test_watchdog_store_now_is_the_database_clock_as_a_datetime(db, store):
    now = WatchdogStore(store).now()
    assert isinstance(now, datetime) and now.tzinfo is not None
    (db_now,) = db.execute("SELECT now()").fetchone()
    assert abs(db_now - now) < timedelta(seconds=60)


def test_watchdog_store_reads_mismatches_verdicts_outcomes_and_gates(gated, store):
    db = gated
    db.execute("INSERT INTO recon.mismatches (cycle_id, kind, profile_id, exchange_account, "
               "symbol, trade_id, notional_usd, details) VALUES "
               "('c1', 'qty_drift', 'alpha', 'acct1', %s, 't1', 12.5, '{\"why\": \"x\"}'), "
               "('c1', 'ghost_slice', 'beta', 'acct1', %s, 't2', 100, '{}'), "
               "('c1', 'qty_drift', 'gamma', 'acct2', %s, 't9', 1, '{}'), "
               "('c2', 'qty_drift', 'alpha', 'acct1', %s, 't1', 3, '{}')",
               (SYMBOL,) * 4)
    db.execute("INSERT INTO recon.watchdog_checks (cycle_id, exchange_account, profile_id, "
               "allocated_capital_usd, ghost_notional_usd, mismatch_notional_usd, threshold_pct, "
               "threshold_usd, findings, tripped, clean, reason) VALUES "
               "('c1', 'acct1', 'beta', 5000, 100, 100, 0.5, 25, 1, true, false, 'over'), "
               "('c1', 'acct1', 'alpha', 10000, 0, 12.5, 0.5, 50, 1, false, false, 'under'), "
               "('c0', 'acct1', 'alpha', 10000, 0, 0, 0.5, 50, 0, false, true, 'clean')")
    db.execute("INSERT INTO recon.cycles (cycle_id, exchange_account, status, error) VALUES "
               "('c0', 'acct1', 'succeeded', NULL), ('c1', 'acct1', 'failed', 'boom')")
    watchdog = WatchdogStore(store)

    frame = watchdog.cycle_mismatches("c1", "acct1")
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["kind", "profile_id", "exchange_account", "symbol",
                                   "trade_id", "notional_usd", "details"]
    assert frame.to_dict("records") == [
        {"kind": "qty_drift", "profile_id": "alpha", "exchange_account": "acct1",
         "symbol": SYMBOL, "trade_id": "t1", "notional_usd": 12.5, "details": {"why": "x"}},
        {"kind": "ghost_slice", "profile_id": "beta", "exchange_account": "acct1",
         "symbol": SYMBOL, "trade_id": "t2", "notional_usd": 100.0, "details": {}}]
    assert all(type(v) is float for v in frame["notional_usd"].tolist())
    empty = watchdog.cycle_mismatches("nope", "acct1")
    assert empty.empty and list(empty.columns) == list(frame.columns)

    verdicts = watchdog.verdicts("c1", "acct1")
    assert [v["profile_id"] for v in verdicts] == ["alpha", "beta"]
    alpha, beta = verdicts
    assert alpha == {"profile_id": "alpha", "allocated_capital_usd": 10000.0,
                     "mismatch_notional_usd": 12.5, "ghost_notional_usd": 0.0,
                     "order_notional_usd": 0.0, "position_notional_usd": 0.0,
                     "threshold_pct": 0.5, "threshold_usd": 50.0, "findings": 1,
                     "tripped": False, "clean": False, "reason": "under",
                     "trading_state": "paused", "pause_source": "parity_watchdog",
                     "paused_at": PAUSED_AT}
    for v in verdicts:
        assert all(type(v[k]) is float for k in (
            "allocated_capital_usd", "mismatch_notional_usd", "ghost_notional_usd",
            "order_notional_usd", "position_notional_usd", "threshold_pct", "threshold_usd"))
    assert isinstance(alpha["paused_at"], datetime)
    assert beta["paused_at"] is None and beta["tripped"] is True

    outcomes = watchdog.cycle_outcomes(["c0", "c1", "c9"], "alpha")
    assert outcomes == {
        "c0": {"cycle_id": "c0", "status": "succeeded", "error": None, "clean": True,
               "tripped": False, "findings": 0},
        "c1": {"cycle_id": "c1", "status": "failed", "error": "boom", "clean": False,
               "tripped": False, "findings": 1},
        "c9": {"cycle_id": "c9", "status": None, "error": None, "clean": None,
               "tripped": None, "findings": None}}
    assert watchdog.cycle_outcomes([], "alpha") == {}

    gates = watchdog.gates("acct1")
    assert gates == [
        {"profile_id": "alpha", "exchange_account": "acct1", "trading_state": "paused",
         "pause_source": "parity_watchdog", "paused_at": PAUSED_AT,
         "last_auto_resume_at": RESUMED_AT},
        {"profile_id": "beta", "exchange_account": "acct1", "trading_state": "active",
         "pause_source": None, "paused_at": None, "last_auto_resume_at": None}]
    assert isinstance(gates[0]["paused_at"], datetime)
    assert isinstance(gates[0]["last_auto_resume_at"], datetime)


def test_watchdog_store_records_and_reads_the_resume_outlook(gated, store):
    watchdog = WatchdogStore(store)
    earliest = datetime(2026, 1, 2, 4, 0, tzinfo=timezone.utc)
    conditions = [{"name": "min_pause", "holds": False, "until": earliest.isoformat()}]
    watchdog.record_resume_outlook("alpha", "acct1", {
        "held_back_by": ("min_pause", "clean_cycles"), "conditions": conditions,
        "earliest_at": earliest, "clean_cycles_needed": 2}, 1)
    watchdog.record_resume_outlook("beta", "acct1", None, 0)

    alpha, beta = watchdog.resume_outlook("acct1")
    checked = alpha.pop("resume_checked_at")
    assert isinstance(checked, datetime) and checked.tzinfo is not None
    assert alpha == {"profile_id": "alpha", "trading_state": "paused",
                     "pause_source": "parity_watchdog", "paused_at": PAUSED_AT,
                     "last_auto_resume_at": RESUMED_AT,
                     "resume_held_back_by": ["min_pause", "clean_cycles"],
                     "resume_conditions": conditions, "resume_earliest_at": earliest,
                     "resume_clean_cycles_needed": 2, "clean_cycles": 1}
    assert isinstance(alpha["resume_earliest_at"], datetime)
    assert isinstance(beta.pop("resume_checked_at"), datetime)
    assert beta == {"profile_id": "beta", "trading_state": "active", "pause_source": None,
                    "paused_at": None, "last_auto_resume_at": None, "resume_held_back_by": None,
                    "resume_conditions": None, "resume_earliest_at": None,
                    "resume_clean_cycles_needed": None, "clean_cycles": 0}

    # Recorded again (the upsert): the profile's outlook is replaced, not added.
    watchdog.record_resume_outlook("alpha", "acct1", None, 3)
    alpha = watchdog.resume_outlook("acct1")[0]
    assert (alpha["resume_held_back_by"], alpha["resume_conditions"],
            alpha["resume_earliest_at"], alpha["resume_clean_cycles_needed"],
            alpha["clean_cycles"]) == (None, None, None, None, 3)
    assert gated.execute("SELECT count(*) FROM recon.watchdog_state").fetchone() == (2,)
    # A profile of another account is not in this account's outlook.
    assert [r["profile_id"] for r in watchdog.resume_outlook("acct2")] == ["gamma"]


def test_watchdog_store_reads_gate_events_newest_first(gated, store):
    gated.execute("INSERT INTO recon.trading_gate_events (profile_id, action, previous_state, "
                  "previous_pause_source, trading_state, pause_source, reason, cycle_id, run_id, "
                  "evidence, at) VALUES "
                  "('alpha', 'watchdog_pause', 'active', NULL, 'paused', 'parity_watchdog', "
                  " 'over', 'c1', 'r1', '{\"n\": 1}', %s), "
                  "('alpha', 'auto_resume', 'paused', 'parity_watchdog', 'active', NULL, "
                  " 'clean', 'c5', 'r5', '{}', %s), "
                  "('beta', 'operator_pause', 'active', NULL, 'paused', 'operator', 'ops', NULL, "
                  " 'r2', '{}', %s)", (PAUSED_AT, PAUSED_AT + timedelta(hours=1), PAUSED_AT))
    events = WatchdogStore(store).gate_events("alpha")
    assert [e["action"] for e in events] == ["auto_resume", "watchdog_pause"]
    assert events[1] == {"id": events[1]["id"], "action": "watchdog_pause",
                         "previous_state": "active", "previous_pause_source": None,
                         "trading_state": "paused", "pause_source": "parity_watchdog",
                         "reason": "over", "cycle_id": "c1", "run_id": "r1",
                         "evidence": {"n": 1}, "at": PAUSED_AT}
    assert type(events[1]["id"]) is int and isinstance(events[0]["at"], datetime)
    assert [e["action"] for e in WatchdogStore(store).gate_events("alpha", limit=1)] == [
        "auto_resume"]


def _decision(db, cycle, fill_id, *, profile="alpha", trade="t1", slice_no=1, decision="GO",
              account="acct1", filled_at=FILLED_AT, qty="0.123456789012345678"):
    (decision_id,) = db.execute(
        "INSERT INTO recon.backfill_decisions (cycle_id, exchange_account, symbol, "
        "exchange_fill_id, exchange_order_id, client_order_id, fill_side, fill_qty, fill_price, "
        "fee_usd, filled_at, profile_id, trade_id, slice_no, match_mode, strong, assignable, "
        "decision, reason, idempotency_key) VALUES (%s, %s, %s, %s, '9100', 'web1', 'sell', %s, "
        "'110.50', NULL, %s, %s, %s, %s, 'sub_tag', true, true, %s, 'fits', %s) RETURNING id",
        (cycle, account, SYMBOL, fill_id, Decimal(qty), filled_at, profile, trade, slice_no,
         decision,
         None if trade is None else f"exit_backfill:{profile}:{trade}:{slice_no}:{fill_id}")
    ).fetchone()
    return decision_id


def test_backfill_store_reads_decisions_with_exact_numbers_and_datetimes(db, store):
    d2 = _decision(db, "c1", "f2", filled_at=FILLED_AT + timedelta(minutes=1))
    d1 = _decision(db, "c1", "f1")
    _decision(db, "c1", "f3", decision="NO_GO")
    _decision(db, "c1", "f4", profile="beta", trade="t7")
    _decision(db, "c1", "f5", profile=None, trade=None, slice_no=None, decision="NO_GO")
    _decision(db, "c2", "f1")
    backfill = BackfillStore(store)

    rows = backfill.decisions("c1", "alpha", "GO")
    assert [r["decision_id"] for r in rows] == [d1, d2]
    first = rows[0]
    assert first == {
        "decision_id": d1, "cycle_id": "c1", "exchange_account": "acct1", "symbol": SYMBOL,
        "exchange_fill_id": "f1", "exchange_order_id": "9100", "client_order_id": "web1",
        "fill_side": "sell", "fill_qty": "0.123456789012345678", "fill_price": "110.50",
        "fee_usd": None, "filled_at": FILLED_AT, "profile_id": "alpha", "trade_id": "t1",
        "slice_no": 1, "match_mode": "sub_tag", "strong": True, "assignable": True,
        "decision": "GO", "reason": "fits", "idempotency_key": "exit_backfill:alpha:t1:1:f1",
        "created_at": first["created_at"], "run_id": None}
    assert isinstance(first["filled_at"], datetime) and isinstance(first["created_at"], datetime)
    assert Decimal(first["fill_qty"]) == Decimal("0.123456789012345678")

    assert backfill.profiles_with_decision("c1", "acct1", "GO") == ["alpha", "beta"]
    assert backfill.profiles_with_decision("c1", "acct1", "NO_GO") == ["alpha"]
    assert backfill.profiles_with_decision("c1", "acct2", "GO") == []

    assert backfill.decision(d1) == first
    assert backfill.decision(10 ** 9) is None

    in_c2 = backfill.pair_in_cycle("c2", first)
    assert in_c2["cycle_id"] == "c2" and in_c2["exchange_fill_id"] == "f1"
    assert isinstance(in_c2["filled_at"], datetime)
    assert backfill.pair_in_cycle("c2", {**first, "slice_no": 2}) is None
    assert backfill.pair_in_cycle("c3", first) is None


def test_backfill_store_matching_state(db, store):
    db.execute("INSERT INTO applied_fills (exchange_account, symbol, exchange_fill_id, "
               "profile_id, side, qty, price, filled_at) VALUES "
               "('acct1', %s, 'f1', 'alpha', 'sell', 1, 100, %s), "
               "('acct1', 'ETH/USDT:USDT', 'f1', 'alpha', 'sell', 1, 100, %s), "
               "('acct2', %s, 'f2', 'alpha', 'sell', 1, 100, %s)",
               (SYMBOL, FILLED_AT, FILLED_AT, SYMBOL, FILLED_AT))
    db.execute("INSERT INTO recon.exit_fill_hints (exchange_account, exchange_order_id, "
               "profile_id, trade_id, note, added_by) VALUES "
               "('acct1', '9100', 'alpha', 't1', 'ui close', 'op'), "
               "('acct2', '9200', 'beta', 't2', 'ui close', 'op')")
    decision_id = _decision(db, "c1", "f9")
    for verdict, note in (("reject", "no"), ("approve", "yes")):
        db.execute("INSERT INTO recon.backfill_reviews (decision_id, verdict, note, "
                   "exchange_account, symbol, exchange_fill_id, profile_id, trade_id, slice_no, "
                   "run_id) VALUES (%s, %s, %s, 'acct1', %s, 'f9', 'alpha', 't1', 1, 'r')",
                   (decision_id, verdict, note, SYMBOL))
    fills = pd.DataFrame({"symbol": [SYMBOL, SYMBOL, "ETH/USDT:USDT"],
                          "exchange_fill_id": ["f1", "f2", "f3"]})

    state = BackfillStore(store).matching_state("acct1", fills)
    assert state["booked"] == frozenset({(SYMBOL, "f1")})
    assert state["hints"] == {"9100": ("alpha", "t1")}
    (key, review), = state["reviews"].items()
    assert key == (SYMBOL, "f9", "alpha", "t1", 1)
    assert isinstance(review, Review) and (review.verdict, review.note) == ("approve", "yes")
    assert type(review.review_id) is int

    nothing = BackfillStore(store).matching_state("acct1", fills.iloc[0:0])
    assert nothing["booked"] == frozenset() and nothing["hints"] == {"9100": ("alpha", "t1")}


def _fill(fill_id, qty, price, *, fee_usd, order="9100", coid=None, minutes=0):
    return {"symbol": SYMBOL, "exchange_fill_id": fill_id, "exchange_order_id": order,
            "client_order_id": coid, "side": "sell", "qty": qty, "price": price,
            "fee_usd": fee_usd, "fee_asset": "BNB", "fee_amount": Decimal("0.000123456789"),
            "filled_at": pd.Timestamp(FILLED_AT) + pd.Timedelta(minutes=minutes)}


def test_fill_store_saves_and_reads_the_window_in_one_call(db, store):
    fills_store = FillStore(store)
    read_at = datetime(2026, 1, 3, 1, 0, 0, 250000, tzinfo=timezone.utc)
    inserted, window = fills_store.save_and_read_window(
        "acct1", "run-1",
        [_fill("f1", 0.1 + 0.2, 100.25, fee_usd=None),
         _fill("f2", 2.0, 99.5, fee_usd=Decimal("0.012345678901234567"), order="9200",
               coid="rc.ALP.t1.X1", minutes=1)],
        {SYMBOL: {"last_fill_id": 42, "last_fill_at": FILLED_AT, "activity_key": "k1",
                  "read_at": read_at}},
        {}, FILLED_AT - timedelta(hours=1),
        {"last_income_ms": 1_767_400_000_000, "swept_at": read_at})
    assert inserted == 2
    assert [w["exchange_fill_id"] for w in window] == ["f1", "f2"]
    assert window[1] == {"exchange_account": "acct1", "symbol": SYMBOL, "exchange_fill_id": "f2",
                         "exchange_order_id": "9200", "client_order_id": "rc.ALP.t1.X1",
                         "side": "sell", "qty": 2.0, "price": 99.5,
                         "fee_usd": float(Decimal("0.012345678901234567")), "fee_asset": "BNB",
                         "fee_amount": 0.000123456789,
                         "filled_at": FILLED_AT + timedelta(minutes=1)}
    assert all(type(w[k]) is float for w in window for k in ("qty", "price", "fee_amount"))
    assert window[0]["fee_usd"] is None and isinstance(window[0]["filled_at"], datetime)
    # Stored as psycopg stored a float parameter (through float8), the fees exactly.
    assert db.execute("SELECT qty::text, price::text, fee_usd, fee_amount FROM "
                      "recon.exchange_fills ORDER BY exchange_fill_id").fetchall() == [
        ("0.3", "100.25", None, Decimal("0.000123456789")),
        ("2", "99.5", Decimal("0.012345678901234567"), Decimal("0.000123456789"))]

    assert fills_store.cursors("acct1") == {
        SYMBOL: Cursor(42, "k1", int(read_at.timestamp() * 1000))}
    assert fills_store.income_cursor("acct1") == (1_767_400_000_000,
                                                  int(read_at.timestamp() * 1000))
    assert fills_store.income_cursor("acct2") is None and fills_store.cursors("acct2") == {}
    assert fills_store.known_client_ids("acct1", ["9100", "9200", "9300"]) == {
        "9200": "rc.ALP.t1.X1"}
    assert fills_store.known_client_ids("acct1", []) == {}
    assert fills_store.unresolved_orders("acct1", FILLED_AT) == [("9100", SYMBOL)]
    assert fills_store.unresolved_orders("acct1", FILLED_AT + timedelta(seconds=1)) == []

    # Again, with the same fill now priced and its order learnt, an older cursor and no sweep:
    # nothing new is stored, the fee is filled in once, the order resolved, the cursor id kept.
    inserted, window = fills_store.save_and_read_window(
        "acct1", "run-2", [_fill("f1", 0.3, 100.25, fee_usd=Decimal("0.5"))],
        {SYMBOL: {"last_fill_id": 7, "last_fill_at": None, "activity_key": None,
                  "read_at": read_at + timedelta(minutes=5)}},
        {"9100": "web_manual1"}, FILLED_AT + timedelta(seconds=30))
    assert inserted == 0
    assert [(w["exchange_fill_id"], w["client_order_id"]) for w in window] == [
        ("f2", "rc.ALP.t1.X1")]
    assert db.execute("SELECT client_order_id, fee_usd FROM recon.exchange_fills "
                      "WHERE exchange_fill_id = 'f1'").fetchone() == ("web_manual1", Decimal("0.5"))
    assert db.execute("SELECT last_fill_id, last_fill_at, activity_key, run_id FROM "
                      "recon.exchange_fill_cursors").fetchone() == (42, FILLED_AT, None, "run-2")
    assert db.execute("SELECT last_income_ms, run_id FROM "
                      "recon.exchange_income_cursors").fetchone() == (1_767_400_000_000, "run-1")
    assert fills_store.unresolved_orders("acct1", FILLED_AT) == []


def test_trading_tables_lookups(db, store):
    db.execute("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) "
               "VALUES ('gamma', 'acct2', 'GAM', 2000)")
    db.execute("INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, "
               "exchange_order_id, status, qty) VALUES "
               "('alpha', 't1', 'ENTRY', %s, 'buy', 'rc.ALP.t1.E1', '9001', 'open', 1), "
               "('beta', 't2', 'ENTRY', %s, 'buy', 'rc.BET.t2.E1', NULL, 'new', 1), "
               "('gamma', 't3', 'ENTRY', %s, 'buy', 'rc.GAM.t3.E1', '9003', 'open', 1)",
               (SYMBOL,) * 3)
    tables = TradingTables(store)
    assert tables.exchange_accounts() == {"acct1", "acct2"}
    assert tables.profile_ids() == {"alpha", "beta", "gamma"}
    assert tables.profile("gamma") == {"id": "gamma", "exchange_account": "acct2"}
    assert tables.profile("nobody") is None
    assert tables.known_order_ids(["9001", "rc.BET.t2.E1", "nope"]) == {
        "rc.ALP.t1.E1", "9001", "rc.BET.t2.E1"}
    assert tables.known_order_ids([]) == set()
