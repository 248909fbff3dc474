"""Bad input to the public SQL functions that apply money (issue 18, "reliability proof"):
hypothesis replaces arguments of recon_reconcile_entry_fill, recon_reconcile_exit_fill,
recon_reconcile_cancel, recon_synthetic_exit and recon_exit_backfill with bad values (NaN,
Infinity, negative, zero, huge numerics, garbage strings, nulls, fills arrays of the wrong
shape, unknown profiles and orders) and calls them the way the store does
(`PostgresStore.call`, one transaction per call), on the real PostgreSQL.

Each call either raises a clear Postgres error (or returns a refused/unchanged outcome) and
leaves the trading tables (profiles, orders, positions, trade_history, applied_fills,
capital_ledger) and recon.corrections byte-for-byte unchanged, or, when the input is in fact
valid, applies a correction whose booked numbers are all finite and consistent. Never a
partial write, never a NaN or an infinity booked."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon_assets.resources.database import PostgresStore
from recon_assets_tests.db.functions.decisions import recorded_backfill, recorded_exit
from recon_assets_tests.db.functions.test_lifecycle_handlers import SYMBOL
from recon_assets_tests.harness.examples import examples

from recon_assets_tests.harness.invariants import violations

# A synthetic exit called directly (not from the heartbeat) has no parity checks behind it, which
# is what that invariant reads; every other invariant must hold after each call.
NOT_FOR_DIRECT_CALLS = {"synthetic_exit_allowed"}

pytestmark = pytest.mark.db

TABLES = ("profiles", "orders", "positions", "trade_history", "applied_fills", "capital_ledger",
          "recon.corrections")
NUMERIC_COLUMNS = """
    SELECT table_schema, table_name, column_name FROM information_schema.columns
     WHERE data_type = 'numeric' AND table_schema = 'public'
       AND table_name IN ('orders', 'positions', 'trade_history', 'applied_fills', 'capital_ledger')"""

ENTRY, EXIT = "rc.ALP.t1.E1", "rc.ALP.t1.X1"

# ---- bad values --------------------------------------------------------------------------
bad_numeric = st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "inf", "-1", "-0.001",
                               "0", "1e30", "-1e30", "1e-30", "abc", "", "1,5", "2 2", None,
                               "0x10"])
bad_text = st.sampled_from([None, "", "nobody", "beta", "x" * 300, "'; DROP TABLE orders; --",
                            "rc.ALP.t1.E1 ", "RC.ALP.T1.E1", "\u00e9\u6f22"])
bad_fill = st.fixed_dictionaries({}, optional={
    "id": st.sampled_from(["f1", "", None, 5, {"a": 1}]),
    "qty": st.sampled_from(["NaN", "Infinity", "-2", "0", "2", "1e30", "abc", None, {"q": 2}, [2]]),
    "price": st.sampled_from(["NaN", "Infinity", "-1", "100", "1e30", "abc", None, {}]),
    "fee_usd": st.sampled_from(["NaN", "Infinity", "-Infinity", "0.1", "abc", None]),
    "fee_amount": st.sampled_from(["NaN", "0.1", "abc"]),
    "filled_at": st.sampled_from(["garbage", "2026-13-45", "infinity", None,
                                  "2026-01-01T00:00:00+00:00"]),
})
bad_fills = st.one_of(
    st.sampled_from([{"id": "f1"}, "fills", 5, [1, 2], [[]], None, {}]),
    st.lists(bad_fill, min_size=1, max_size=3),
    st.just([{"id": "f1", "qty": "1", "price": "100"}, {"id": "f1", "qty": "1", "price": "100"}]),
)
bad_status = st.sampled_from([None, "", "filled", "open", "CANCELED", "garbage", "canceled "])
bad_bool = st.sampled_from([None, "maybe", "2", "", "yes please"])
bad_json = st.sampled_from(["not json", 5, [1], None, {"nested": {"deep": [None]}}])
bad_int = st.sampled_from([None, -1, 0, 2, 2**31, "1.5", "abc", "NaN", ""])


def _reset(conn) -> None:
    conn.execute("TRUNCATE applied_fills, capital_ledger, positions, trade_history, orders, "
                 "recon.corrections, recon.reconciling, recon.exchange_fills, profiles, "
                 "recon.parity_checks, recon.backfill_decisions, recon.backfill_reviews CASCADE")
    conn.execute("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) "
                 "VALUES ('alpha', 'acct1', 'ALP', 10000), ('beta', 'acct1', 'BET', 5000)")
    for coid, intent, side in ((ENTRY, "ENTRY", "buy"), (EXIT, "EXIT", "sell")):
        conn.execute("INSERT INTO orders (profile_id, trade_id, intent, symbol, side, "
                     "client_order_id, exchange_order_id, status, qty) VALUES ('alpha', 't1', "
                     "%s, %s, %s, %s, %s, 'open', 2)", (intent, SYMBOL, side, coid, coid[-2:]))


def _entry_filled(store) -> None:
    """The entry order filled and booked: an open slice of 2 at 100, a long position of 2."""
    out = store.call("recon_reconcile_entry_fill", _good_entry(key="setup-entry"))
    assert out["status"] == "applied", out


def _good_entry(key="k-entry") -> dict:
    return dict(p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key=key,
                p_client_order_id=ENTRY, p_filled_qty="2", p_avg_fill_price="100",
                p_exchange_order_id="E1",
                p_fills=[{"id": "f1", "qty": "2", "price": "100", "fee_usd": "0.1",
                          "filled_at": "2026-01-01T00:00:00+00:00"}],
                p_dry_run=False, p_evidence={"snapshot": "run-1"})


def _good_exit() -> dict:
    return dict(p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key="k-exit",
                p_client_order_id=EXIT, p_filled_qty="2", p_avg_fill_price="110",
                p_exchange_order_id="X1",
                p_fills=[{"id": "x1", "qty": "2", "price": "110", "fee_usd": "0.1",
                          "filled_at": "2026-01-01T00:01:00+00:00"}],
                p_dry_run=False, p_evidence={"snapshot": "run-1"})


def _good_cancel() -> dict:
    return dict(p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key="k-cancel",
                p_client_order_id=ENTRY, p_exchange_order_id="E1", p_filled_qty="0",
                p_final_status="canceled", p_dry_run=False, p_evidence={})


# The recorded decisions the good calls apply (the money functions apply nothing else).
DECIDED_CHECK, DECIDED_BACKFILL = 9001, 9002


def _good_synthetic() -> dict:
    return dict(p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key="k-synthetic",
                p_trade_id="t1", p_slice_no=1, p_qty="2", p_price="105",
                p_price_source="mark_price", p_dry_run=False, p_evidence={},
                p_exited_at="2026-01-01T00:02:00+00:00", p_check_id=DECIDED_CHECK)


def _good_backfill() -> dict:
    return dict(p_profile_id="alpha", p_cycle_id="run-1", p_idempotency_key="k-backfill",
                p_trade_id="t1", p_slice_no=1, p_symbol=SYMBOL, p_exchange_fill_id="b1",
                p_dry_run=False, p_evidence={}, p_decision_id=DECIDED_BACKFILL)


def _stored_exit_fill(conn, qty="2", price="110") -> None:
    conn.execute("INSERT INTO recon.exchange_fills (exchange_account, symbol, exchange_fill_id, "
                 "exchange_order_id, client_order_id, side, qty, price, fee_usd, filled_at) "
                 "VALUES ('acct1', %s, 'b1', '777', 'manual-close', 'sell', %s, %s, 0.1, "
                 "'2026-01-01T00:03:00+00:00')", (SYMBOL, qty, price))


# function -> (the valid arguments, the state they apply to, the bad values of each argument)
NUMERIC_OR_TEXT = {"p_profile_id": bad_text, "p_cycle_id": bad_text,
                   "p_idempotency_key": bad_text, "p_dry_run": bad_bool, "p_evidence": bad_json}
CASES = {
    "recon_reconcile_entry_fill": (_good_entry, "orders", {
        **NUMERIC_OR_TEXT, "p_client_order_id": bad_text, "p_filled_qty": bad_numeric,
        "p_avg_fill_price": bad_numeric, "p_fills": bad_fills, "p_final_status": bad_status,
        "p_exchange_order_id": bad_text}),
    "recon_reconcile_exit_fill": (_good_exit, "entry_filled", {
        **NUMERIC_OR_TEXT, "p_client_order_id": bad_text, "p_filled_qty": bad_numeric,
        "p_avg_fill_price": bad_numeric, "p_fills": bad_fills, "p_final_status": bad_status,
        "p_exchange_order_id": bad_text}),
    "recon_reconcile_cancel": (_good_cancel, "orders", {
        **NUMERIC_OR_TEXT, "p_client_order_id": bad_text, "p_filled_qty": bad_numeric,
        "p_final_status": bad_status, "p_exchange_order_id": bad_text}),
    # No synthetic exit while the trade's EXIT order is open (the lifecycle resolves it first):
    # the slice's EXIT order was cancelled.
    "recon_synthetic_exit": (_good_synthetic, "entry_filled_exit_cancelled", {
        **NUMERIC_OR_TEXT, "p_trade_id": bad_text, "p_slice_no": bad_int,
        "p_qty": bad_numeric, "p_price": bad_numeric, "p_price_source": bad_text,
        "p_exited_at": st.sampled_from(["garbage", "infinity", "-infinity", "", "2026-02-30"])}),
    "recon_exit_backfill": (_good_backfill, "entry_filled_and_stored_fill", {
        **NUMERIC_OR_TEXT, "p_trade_id": bad_text, "p_slice_no": bad_int,
        "p_symbol": bad_text, "p_exchange_fill_id": bad_text}),
}


@st.composite
def bad_call(draw, function):
    good, _state, bad = CASES[function]
    params = good()
    names = draw(st.lists(st.sampled_from(sorted(bad)), min_size=1, max_size=2, unique=True))
    for name in names:
        params[name] = draw(bad[name])
    return params


def _dump(conn) -> dict:
    return {t: conn.execute(f"SELECT to_jsonb(x)::text FROM {t} x ORDER BY 1").fetchall()
            for t in TABLES}


def _non_finite(conn) -> list:
    """Every numeric of the trading tables that is NaN or infinite (never a booked number)."""
    found = []
    for schema, table, column in conn.execute(NUMERIC_COLUMNS).fetchall():
        (n,) = conn.execute(
            f'SELECT count(*) FROM {schema}.{table} WHERE "{column}" IN '
            "('NaN'::numeric, 'Infinity'::numeric, '-Infinity'::numeric)").fetchone()
        if n:
            found.append(f"{table}.{column}")
    return found


def _consistent(conn) -> None:
    for coid, filled, booked in conn.execute("""
            SELECT o.client_order_id, o.filled_qty,
                   COALESCE((SELECT sum(qty) FROM applied_fills f
                             WHERE f.client_order_id = o.client_order_id), 0)
              FROM orders o""").fetchall():
        assert filled == booked, coid
    for entry, exit_, open_ in conn.execute(
            "SELECT entry_qty, exit_qty, virtual_open_qty FROM trade_history").fetchall():
        assert entry == exit_ + open_ and min(entry, exit_, open_) >= 0


@pytest.fixture
def setup(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        def prepare(state):
            _reset(conn)
            if state.startswith("entry_filled"):
                _entry_filled(store)
            if state == "entry_filled_and_stored_fill":
                _stored_exit_fill(conn)
                recorded_backfill(conn, "b1", decision_id=DECIDED_BACKFILL)
            if state == "entry_filled_exit_cancelled":
                conn.execute("UPDATE orders SET status = 'canceled' WHERE client_order_id = %s",
                             (EXIT,))
                recorded_exit(conn, key="k-synthetic", price="105", check_id=DECIDED_CHECK)
        yield conn, store, prepare


def _check(setup, function, params):
    conn, store, prepare = setup
    prepare(CASES[function][1])
    before = _dump(conn)
    try:
        out = store.call(function, params)
    except psycopg.Error as exc:
        # A clear error from Postgres (or psycopg refusing the value): the message says what.
        assert str(exc).strip(), "an error without a message"
        assert _dump(conn) == before, f"{function} wrote part of a refused call: {exc}"
        return "error"
    except ValueError as exc:  # e.g. a NUL byte psycopg will not send
        assert _dump(conn) == before
        return f"refused before sending: {exc}"
    assert isinstance(out, dict) and out.get("status") in (
        "applied", "already_applied", "dry_run", "unchanged"), out
    if out["status"] != "applied":
        after = _dump(conn)
        if out["status"] == "dry_run":
            after = {t: rows for t, rows in after.items() if t != "recon.corrections"}
            before = {t: rows for t, rows in before.items() if t != "recon.corrections"}
        assert after == before, f"{function} returned {out['status']} and changed the tables"
    assert _non_finite(conn) == [], f"{function} booked a non-finite number: {params}"
    _consistent(conn)
    broken = {k: v for k, v in violations(conn.info.dsn).items() if k not in NOT_FOR_DIRECT_CALLS}
    assert broken == {}, f"{function}({params}) broke invariants: {broken}"
    return out["status"]


SETTINGS = settings(max_examples=examples(40), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("function", sorted(CASES))
def test_the_valid_call_applies(setup, function):
    """The baseline each bad call departs from is itself valid."""
    good = CASES[function][0]()
    assert _check(setup, function, good) == "applied"


@pytest.mark.parametrize("function", sorted(CASES))
@SETTINGS
@given(data=st.data())
def test_bad_arguments_never_book_anything_wrong(setup, function, data):
    params = data.draw(bad_call(function), label="params")
    _check(setup, function, params)


@pytest.mark.parametrize("qty,price", [("NaN", "110"), ("2", "NaN"), ("2", "Infinity")])
def test_a_stored_exchange_fill_that_is_not_finite_is_not_backfilled(setup, qty, price):
    """recon.exchange_fills' CHECKs (qty > 0, price >= 0) let NaN and Infinity through (both
    compare greater than every number in Postgres): the backfill must still not book them."""
    conn, store, prepare = setup
    prepare("entry_filled")
    try:
        _stored_exit_fill(conn, qty, price)
    except psycopg.Error:
        return  # the table refuses it: nothing to backfill
    recorded_backfill(conn, "b1", decision_id=DECIDED_BACKFILL)
    before = _dump(conn)
    with pytest.raises(psycopg.Error):
        store.call("recon_exit_backfill", _good_backfill())
    assert _dump(conn) == before
