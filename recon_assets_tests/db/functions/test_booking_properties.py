"""Properties of the fill handlers over random sequences of partial fills, retries, re-keyed
evidence and crashes (a transaction rolled back midway), on the real PostgreSQL. After every
step the database agrees with itself: each slice's entry and exit qty are the sums of its booked
fills, each order's filled qty is the sum of its booked fills, the position is the signed sum of
the booked fills, the capital ledger equals its recalculation from scratch, and no exchange fill
is booked twice. At the end, once the evidence is reconciled, the database agrees with the
exchange."""


from fractions import Fraction

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


class Books:
    """The accounting the handlers must do, written independently of the SQL: which fills are
    booked, each slice's quantities, volume-weighted entry and exit prices and realised PnL (at
    the entry price of the moment of each exit, fees of 0.01 per fill), the position's signed
    qty and average (re-weighted when it grows, kept when it shrinks, reset when it flips)."""

    FEE = Fraction("0.01")

    def __init__(self):
        self.booked = {name: [] for name in ORDERS}  # ids booked per order
        self.slices = []  # dicts: entry, entry_price, exit, exit_price, pnl
        self.position = (Fraction(0), None)  # signed qty, average price

    def outcome(self, name, fills):
        """What booking `fills` (all the exchange's fills of the order) must do: 'unchanged',
        'applied', or the refusal of an exit booked before the entry it closes."""
        new = [(i, Fraction(q), Fraction(p)) for i, q, p in fills if i not in self.booked[name]]
        if not new:
            return "unchanged", new
        if name == "exit":
            open_ = [s for s in self.slices if s["entry"] - s["exit"] > 0]
            if not open_:
                return "no open slice", new
            if sum(q for _, q, _ in new) > open_[0]["entry"] - open_[0]["exit"]:
                return "exceeds the open qty", new
        return "applied", new

    def apply(self, name, new):
        d = sum(q for _, q, _ in new)
        price = sum(q * p for _, q, p in new) / d
        fees = self.FEE * len(new)
        self.booked[name] += [i for i, _, _ in new]
        if name == "entry":
            open_ = [s for s in self.slices if s["entry"] - s["exit"] > 0]
            if open_:
                s = open_[-1]
                s["entry_price"] = (s["entry"] * s["entry_price"] + d * price) / (s["entry"] + d)
                s["entry"] += d
                s["pnl"] -= fees
            else:
                self.slices.append(dict(entry=d, entry_price=price, exit=Fraction(0),
                                        exit_price=None, pnl=-fees))
            signed = d
        else:
            s = next(s for s in self.slices if s["entry"] - s["exit"] > 0)
            s["exit_price"] = (s["exit"] * (s["exit_price"] or 0) + d * price) / (s["exit"] + d)
            s["exit"] += d
            s["pnl"] += (price - s["entry_price"]) * d - fees
            signed = -d
        qty, avg = self.position
        new_qty = qty + signed
        if new_qty == 0:
            avg = None
        elif qty == 0 or (qty > 0) != (new_qty > 0):
            avg = price
        elif abs(new_qty) > abs(qty):
            avg = (abs(qty) * avg + abs(signed) * price) / abs(new_qty)
        self.position = (new_qty, avg)

    def check(self, conn, exchange):
        def near(actual, expected):
            if expected is None or actual is None:
                return actual is None and expected is None
            return abs(Fraction(actual) - expected) <= Fraction(1, 10**12) * max(1, abs(expected))

        rows = conn.execute("SELECT entry_qty, entry_price, exit_qty, exit_price, "
                            "virtual_open_qty, status, realised_pnl_usd FROM trade_history "
                            "ORDER BY slice_no").fetchall()
        assert len(rows) == len(self.slices), (rows, self.slices)
        for row, s in zip(rows, self.slices):
            entry, entry_price, exit_, exit_price, open_, status, pnl = row
            assert (entry, exit_, open_) == (s["entry"], s["exit"], s["entry"] - s["exit"]), (row, s)
            assert status == ("open" if s["entry"] > s["exit"] else "closed"), (row, s)
            assert near(entry_price, s["entry_price"]), (row, s)
            assert near(exit_price, s["exit_price"]), (row, s)
            assert near(pnl, s["pnl"]), (row, s)
        position = conn.execute("SELECT CASE side WHEN 'long' THEN qty ELSE -qty END, avg_price "
                                "FROM positions").fetchall()
        qty, avg = self.position
        if qty == 0:
            assert position == [], position
        else:
            assert position[0][0] == qty and near(position[0][1], avg), (position, self.position)
        for name, (coid, *_rest) in ORDERS.items():
            (filled,) = conn.execute("SELECT filled_qty FROM orders WHERE client_order_id = %s",
                                     (coid,)).fetchone()
            fills = {i: q for i, q, _ in exchange[name]}
            assert filled == sum(fills.get(i, 0) for i in self.booked[name]), name


@settings(max_examples=examples(60), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(step, max_size=14))
def test_any_sequence_of_fills_retries_and_crashes_keeps_the_books_whole(pg_dsn, steps):
    exchange = {name: [] for name in ORDERS}  # the exchange's fills per order, oldest first
    seq = 0
    last = None
    books = Books()
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
            name = next(n for n, spec in ORDERS.items() if spec[3] == fn)
            expected, new = books.outcome(name, [(f["id"], f["qty"], f["price"])
                                                 for f in params["p_fills"]])
            try:
                if op[0] == "crash":
                    with conn.transaction() as tx:
                        call(conn, fn, **params)
                        raise psycopg.Rollback(tx)  # the process dies before COMMIT
                else:
                    call(conn, fn, **params)
                    last = (fn, params)
                    assert expected in ("applied", "unchanged"), (
                        f"booked, though the model refuses it: {expected}")
                    if expected == "applied":
                        books.apply(name, new)
            except psycopg.errors.RaiseException as exc:
                # The only refusal this sequence can meet: an exit booked before the entry it
                # closes (no open slice yet, or not enough open qty). Nothing changed.
                assert expected in str(exc), (expected, exc)
            _check_invariants(conn)
            books.check(conn, exchange)
        # The evidence reconciled (entry first), the database agrees with the exchange.
        for name in ORDERS:
            if exchange[name]:
                params = _params(name, exchange[name], f"final:{name}")
                expected, new = books.outcome(name, [(f["id"], f["qty"], f["price"])
                                                     for f in params["p_fills"]])
                call(conn, ORDERS[name][3], **params)
                if expected == "applied":
                    books.apply(name, new)
            _check_invariants(conn)
            books.check(conn, exchange)
            (filled,) = conn.execute("SELECT filled_qty FROM orders WHERE client_order_id = %s",
                                     (ORDERS[name][0],)).fetchone()
            assert filled == sum(q for _, q, _ in exchange[name])
