"""Properties of the fill handlers over random sequences of partial fills, retries, re-keyed
evidence and crashes (a transaction rolled back midway), on the real PostgreSQL. After every
step the database agrees with itself: each slice's entry and exit qty are the sums of its booked
fills, each order's filled qty is the sum of its booked fills, the position is the signed sum of
the booked fills, the capital ledger equals its recalculation from scratch, and no exchange fill
is booked twice. At the end, once the evidence is reconciled, the database agrees with the
exchange."""


import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon_assets_tests.db.functions.test_lifecycle_handlers import SYMBOL, call
from recon_assets_tests.harness.examples import examples

pytestmark = pytest.mark.db

QTY = 6  # each order's qty, in whole units so partial fills add up exactly
ORDERS = {"entry": ("rc.ALP.t1.E1", "ENTRY", "buy", "recon_reconcile_entry_fill"),
          "exit": ("rc.ALP.t1.X1", "EXIT", "sell", "recon_reconcile_exit_fill")}

step = st.one_of(
    st.tuples(st.just("fill"), st.sampled_from(list(ORDERS)), st.integers(1, 3),
              st.integers(100, 120)),
    st.tuples(st.just("reconcile"), st.sampled_from(list(ORDERS)),
              st.sampled_from(["by_state", "fresh_key"])),
    st.tuples(st.just("retry")),
    st.tuples(st.just("crash"), st.sampled_from(list(ORDERS))),
)


def _reset(conn):
    conn.execute("TRUNCATE applied_fills, capital_ledger, positions, trade_history, orders, "
                 "recon.corrections, recon.reconciling, profiles CASCADE")
    conn.execute("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) "
                 "VALUES ('alpha', 'acct1', 'ALP', 10000)")
    for coid, intent, side, _fn in ORDERS.values():
        conn.execute("INSERT INTO orders (profile_id, trade_id, intent, symbol, side, "
                     "client_order_id, exchange_order_id, status, qty) VALUES ('alpha', 't1', %s, "
                     "%s, %s, %s, %s, 'open', %s)", (intent, SYMBOL, side, coid, coid[-2:], QTY))


def _params(name, fills, key):
    coid, _intent, _side, _fn = ORDERS[name]
    filled = sum(q for _, q, _ in fills)
    avg = sum(q * p for _, q, p in fills) / filled
    return dict(p_profile_id="alpha", p_cycle_id="prop", p_idempotency_key=key,
                p_client_order_id=coid, p_filled_qty=str(filled), p_avg_fill_price=str(avg),
                p_exchange_order_id=coid[-2:],
                p_fills=[{"id": i, "qty": str(q), "price": str(p), "fee_usd": "0.01"}
                         for i, q, p in fills])


def _check_invariants(conn):
    for entry, exit_, open_ in conn.execute(
            "SELECT entry_qty, exit_qty, virtual_open_qty FROM trade_history").fetchall():
        assert entry == exit_ + open_ and min(entry, exit_, open_) >= 0
    # Per trade (an entry fill after the trade's slice closed opens a second slice).
    rows = conn.execute("""
        SELECT sum(t.entry_qty), sum(t.exit_qty),
               COALESCE((SELECT sum(f.qty) FROM applied_fills f JOIN orders o
                          ON o.client_order_id = f.client_order_id
                         WHERE o.trade_id = t.trade_id AND o.intent = 'ENTRY'), 0),
               COALESCE((SELECT sum(f.qty) FROM applied_fills f JOIN orders o
                          ON o.client_order_id = f.client_order_id
                         WHERE o.trade_id = t.trade_id AND o.intent = 'EXIT'), 0)
        FROM trade_history t GROUP BY t.trade_id""").fetchall()
    for entry, exit_, booked_entry, booked_exit in rows:
        assert (entry, exit_) == (booked_entry, booked_exit)
    for coid, filled, booked in conn.execute("""
            SELECT o.client_order_id, o.filled_qty,
                   COALESCE((SELECT sum(qty) FROM applied_fills f
                             WHERE f.client_order_id = o.client_order_id), 0)
            FROM orders o""").fetchall():
        assert filled == booked, coid
    (position, fills_net) = conn.execute("""
        SELECT COALESCE((SELECT CASE side WHEN 'long' THEN qty ELSE -qty END FROM positions), 0),
               COALESCE((SELECT sum(CASE side WHEN 'buy' THEN qty ELSE -qty END)
                         FROM applied_fills), 0)""").fetchone()
    assert position == fills_net
    ledger = dict(conn.execute("SELECT trade_id, reserved_usd FROM capital_ledger").fetchall())
    scratch = dict(conn.execute("""
        SELECT trade_id, sum(virtual_open_qty * COALESCE(entry_price, 0)) FROM trade_history
        WHERE status = 'open' GROUP BY trade_id""").fetchall())
    assert ledger == scratch
    (n, distinct) = conn.execute("SELECT count(*), count(DISTINCT (exchange_account, symbol, "
                                 "exchange_fill_id)) FROM applied_fills").fetchone()
    assert n == distinct


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(step, max_size=14))
def test_any_sequence_of_fills_retries_and_crashes_keeps_the_books_whole(pg_dsn, steps):
    exchange = {name: [] for name in ORDERS}  # the exchange's fills per order, oldest first
    seq = 0
    last = None
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        _reset(conn)
        for op in steps:
            if op[0] == "fill":
                _, name, qty, price = op
                if sum(q for _, q, _ in exchange[name]) + qty > QTY:
                    continue
                if name == "exit":  # an exit only closes what the entry opened on the exchange
                    opened = sum(q for _, q, _ in exchange["entry"])
                    if sum(q for _, q, _ in exchange["exit"]) + qty > opened:
                        continue
                seq += 1
                exchange[name].append((f"{name[0]}{seq}", qty, price))
                continue
            if op[0] == "retry":
                if last is None:
                    continue
                fn, params = last
            else:
                name = op[1]
                if not exchange[name]:
                    continue
                seq += 1
                key = (f"k:{name}:{len(exchange[name])}" if op[0] == "reconcile" and
                       op[2] == "by_state" else f"k:{name}:fresh{seq}")
                fn, params = ORDERS[name][3], _params(name, exchange[name], key)
            try:
                if op[0] == "crash":
                    with conn.transaction() as tx:
                        call(conn, fn, **params)
                        raise psycopg.Rollback(tx)  # the process dies before COMMIT
                else:
                    call(conn, fn, **params)
                    last = (fn, params)
            except psycopg.errors.RaiseException as exc:
                # The only refusal this sequence can meet: an exit booked before the entry it
                # closes (no open slice yet, or not enough open qty). Nothing changed.
                assert "no open slice" in str(exc) or "exceeds the open qty" in str(exc), exc
            _check_invariants(conn)
        # The evidence reconciled (entry first), the database agrees with the exchange.
        for name in ORDERS:
            if exchange[name]:
                call(conn, ORDERS[name][3], **_params(name, exchange[name], f"final:{name}"))
            _check_invariants(conn)
            (filled,) = conn.execute("SELECT filled_qty FROM orders WHERE client_order_id = %s",
                                     (ORDERS[name][0],)).fetchone()
            assert filled == sum(q for _, q, _ in exchange[name])
