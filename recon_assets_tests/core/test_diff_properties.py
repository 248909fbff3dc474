"""Hypothesis properties of `core.diff.reconciliation_diff`.

A random consistent state (orders, positions, slices over 1-2 accounts and 1-2 profiles each)
is drawn, then random differences are injected, each with the finding it must produce:
- a diff of identical states is empty;
- every injected difference is found exactly once, with the right kind and ids, and nothing
  else is found;
- swapping buy/sell and long/short everywhere yields the same findings;
- rows the recency guard covers are never reported: the guarded result is exactly the
  unguarded one without the findings that involve a recent row, and the count is observable.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon_assets.core.attribution import make_client_order_id
from recon_assets_tests.core.test_diff import (
    READ_AT,
    check_shape,
    db_order,
    db_position,
    ex_order,
    ex_position,
    profile,
    snapshot,
    trade_slice,
)
from recon_assets.core.diff import reconciliation_diff
from recon_assets_tests.harness.examples import examples

pytestmark = pytest.mark.unit

STEP = 0.001
SYMBOLS = ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")
GHOST_SYMBOL = "XRP/USDT:USDT"  # no position anywhere: injected ghost slices live here
OPEN = ("new", "open", "partially_filled")
TERMINAL = ("filled", "canceled", "rejected", "expired")
RECENT_DB = READ_AT - pd.Timedelta(seconds=2)
RECENT_EX = READ_AT + pd.Timedelta(seconds=1)
SETTINGS = settings(max_examples=examples(50), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class State:
    profiles: list = field(default_factory=list)
    db_orders: list = field(default_factory=list)
    exchange_open_orders: list = field(default_factory=list)
    db_positions: list = field(default_factory=list)
    exchange_positions: list = field(default_factory=list)
    db_trade_slices: list = field(default_factory=list)

    def snapshot(self) -> dict[str, pd.DataFrame]:
        return snapshot(profiles=self.profiles, db_orders=self.db_orders,
                        exchange_open_orders=self.exchange_open_orders,
                        db_positions=self.db_positions,
                        exchange_positions=self.exchange_positions,
                        db_trade_slices=self.db_trade_slices)


def run(state: State, *, db_read_at=READ_AT, recency_guard_s=5.0) -> pd.DataFrame:
    result = reconciliation_diff(**state.snapshot(), cycle_id="prop", db_read_at=db_read_at,
                                 recency_guard_s=recency_guard_s)
    check_shape(result)
    return result


def run_unguarded(state: State) -> pd.DataFrame:
    """The same diff with nothing recent (as the next cycle sees it)."""
    return run(state, db_read_at=READ_AT + pd.Timedelta(hours=1), recency_guard_s=0.0)


@st.composite
def consistent_states(draw) -> State:
    state = State()
    accounts = ["A", "B"][:draw(st.integers(1, 2))]
    owners = []  # (account, profile_id, sub_tag)
    for account in accounts:
        for i in range(draw(st.integers(1, 2))):
            pid = f"p{account}{i}"
            owners.append((account, pid, f"{account}{i}"))
            state.profiles.append(profile(pid, account=account, sub_tag=f"{account}{i}"))
    for n in range(draw(st.integers(0, 10))):
        account, pid, tag = draw(st.sampled_from(owners))
        units = draw(st.integers(1, 5_000))
        filled_units = draw(st.integers(0, units))
        price = draw(st.one_of(st.none(), st.integers(1, 10_000_000).map(lambda c: c / 100)))
        kw = dict(account=account, symbol=draw(st.sampled_from(SYMBOLS)),
                  side=draw(st.sampled_from(("buy", "sell"))), qty=units * STEP,
                  filled=filled_units * STEP, price=price)
        coid = make_client_order_id(tag, f"t{n}", draw(st.sampled_from(("ENTRY", "EXIT"))))
        state.db_orders.append(db_order(coid, profile_id=pid, trade_id=f"t{n}", eoid=f"x{n}",
                                        status=draw(st.sampled_from(OPEN)), **kw))
        state.exchange_open_orders.append(ex_order(coid, f"x{n}", **kw))
    # Positions: each profile may hold each symbol; the exchange holds the account's net.
    net_units: Counter = Counter()
    for account, pid, _ in owners:
        for symbol in SYMBOLS:
            units = draw(st.integers(-3_000, 3_000))
            if draw(st.booleans()):
                continue
            state.db_positions.append(db_position(
                pid, abs(units) * STEP, side="long" if units >= 0 else "short",
                account=account, symbol=symbol))
            net_units[(account, symbol)] += units
    for (account, symbol), units in sorted(net_units.items()):
        state.exchange_positions.append(ex_position(
            abs(units) * STEP, side="long" if units >= 0 else "short", account=account,
            symbol=symbol, step=STEP))
        # Open slices only where the exchange really holds something: no ghost to begin with.
        if units != 0:
            for k in range(draw(st.integers(0, 2))):
                pid = draw(st.sampled_from([p for a, p, _ in owners if a == account]))
                state.db_trade_slices.append(trade_slice(
                    pid, f"s{account}{symbol[:3]}{k}", draw(st.integers(1, 999)) * STEP,
                    side="long" if units > 0 else "short", account=account, symbol=symbol))
    return state


ORDER_MUTATIONS = ("none", "drop_ex", "terminal", "qty", "filled", "side", "price",
                   "qty_price", "fallback", "fallback_qty")


@st.composite
def drifted_states(draw) -> tuple[State, Counter]:
    """A consistent state with injected differences and the findings they must produce, as
    (kind, account, symbol, client_order_id, trade_id, attributable) counts."""
    state = draw(consistent_states())
    expected: Counter = Counter()
    owners = [(p["exchange_account"], p["profile_id"], p["sub_tag"]) for p in state.profiles]
    dropped = set()
    for i, (d, e) in enumerate(zip(state.db_orders, state.exchange_open_orders)):
        mutation = draw(st.sampled_from(ORDER_MUTATIONS))
        key = (d["exchange_account"], d["symbol"], d["client_order_id"], d["trade_id"], True)
        if mutation == "drop_ex":
            dropped.add(i)
            expected[("missing_from_exchange",) + key] += 1
        elif mutation == "terminal":
            d["status"] = draw(st.sampled_from(TERMINAL))
            expected[("status_drift",) + key] += 1
        elif mutation in ("qty", "qty_price", "fallback_qty"):
            e["qty"] = round(e["qty"] + draw(st.integers(1, 100)) * STEP, 6)
            expected[("qty_drift",) + key] += 1
        elif mutation == "filled":
            e["filled_qty"] = round(e["filled_qty"] + STEP, 6)
            expected[("qty_drift",) + key] += 1
        elif mutation == "side":
            e["side"] = "sell" if e["side"] == "buy" else "buy"
            expected[("qty_drift",) + key] += 1
        if mutation in ("price", "qty_price"):
            e["price"] = 1.0 if e["price"] is None else round(e["price"] * 1.5 + 0.01, 2)
            expected[("price_drift",) + key] += 1
        if mutation in ("fallback", "fallback_qty"):  # the exchange reports another client id
            e["client_order_id"] = f"web-{i}"
    state.exchange_open_orders = [e for i, e in enumerate(state.exchange_open_orders)
                                  if i not in dropped]
    # Exchange orders the DB never saw: ours (attributable) or foreign.
    for j in range(draw(st.integers(0, 3))):
        account, pid, tag = draw(st.sampled_from(owners))
        symbol = draw(st.sampled_from(SYMBOLS))
        if draw(st.booleans()):
            coid, trade, attributable = make_client_order_id(tag, f"n{j}", "ENTRY"), f"n{j}", True
        else:
            coid, trade, attributable = draw(st.sampled_from(
                [f"manual-{j}", None, f"rc.ZZ{j}.q{j}.E1"])), None, False
        state.exchange_open_orders.append(ex_order(coid, f"new{j}", account=account,
                                                   symbol=symbol))
        expected[("missing_in_db", account, symbol, coid, trade, attributable)] += 1
    # Position drift: the exchange holds more (never less: a flat exchange would add ghosts).
    accounts = sorted({a for a, _, _ in owners})
    cells = [(a, s) for a in accounts for s in SYMBOLS]
    for account, symbol in draw(st.lists(st.sampled_from(cells), unique=True, max_size=2)):
        extra = draw(st.integers(1, 500))
        rows = [p for p in state.exchange_positions
                if (p["account"], p["symbol"]) == (account, symbol)]
        if rows:
            signed = rows[0]["qty"] * (1 if rows[0]["side"] == "long" else -1)
            signed = round(signed + (extra if signed >= 0 else -extra) * STEP, 6)
            rows[0].update(qty=abs(signed), side="long" if signed >= 0 else "short")
        else:
            state.exchange_positions.append(ex_position(extra * STEP, account=account,
                                                        symbol=symbol, step=STEP))
        expected[("position_drift", account, symbol, None, None, False)] += 1
    # Ghost slices: open slices on a symbol the exchange is flat on, on the side their sum points
    # to (long and short slices of one account that add up to the exchange's flat: in sync).
    books: dict[str, list[tuple[str, int]]] = {}
    for k in range(draw(st.integers(0, 2))):
        account, pid, tag = draw(st.sampled_from(owners))
        units, side = draw(st.integers(1, 999)), draw(st.sampled_from(("long", "short")))
        state.db_trade_slices.append(trade_slice(
            pid, f"g{k}", units * STEP, account=account, symbol=GHOST_SYMBOL, side=side,
            order_client_ids=[make_client_order_id(tag, f"g{k}", "ENTRY")]))
        books.setdefault(account, []).append((f"g{k}", units if side == "long" else -units))
    for account, book in books.items():
        state.exchange_positions.append(ex_position(0.0, side="flat", account=account,
                                                    symbol=GHOST_SYMBOL, step=STEP))
        total = sum(units for _, units in book)
        for trade, units in book:  # the side the claim points to (the other may have netted)
            if units * total > 0:
                expected[("ghost_slice", account, GHOST_SYMBOL, None, trade, True)] += 1
    return state, expected


def found(result: pd.DataFrame) -> Counter:
    return Counter(zip(result["kind"], result["exchange_account"], result["symbol"],
                       result["client_order_id"], result["trade_id"],
                       result["attributable"].astype(bool)))


@SETTINGS
@given(consistent_states())
def test_a_diff_of_identical_states_is_empty(state):
    result = run(state)
    assert result.empty
    assert result.attrs["suppressed_recent"] == 0


@SETTINGS
@given(drifted_states())
def test_every_injected_difference_is_found_exactly_once(case):
    state, expected = case
    result = run(state)
    assert found(result) == expected
    assert result.attrs["suppressed_recent"] == 0
    # The same input always gives the same frame.
    pd.testing.assert_frame_equal(result, run(state))


def mirrored(state: State) -> State:
    flip = {"buy": "sell", "sell": "buy", "long": "short", "short": "long", "flat": "flat"}
    out = copy.deepcopy(state)
    for rows in (out.db_orders, out.exchange_open_orders, out.db_positions,
                 out.exchange_positions, out.db_trade_slices):
        for row in rows:
            row["side"] = flip[row["side"]]
    return out


@SETTINGS
@given(drifted_states())
def test_swapping_buy_sell_and_long_short_everywhere_yields_the_same_findings(case):
    state, _ = case
    result, mirror = run(state), run(mirrored(state))
    keep = ["kind", "profile_id", "exchange_account", "symbol", "client_order_id",
            "exchange_order_id", "trade_id", "attributable", "db_status", "exchange_status",
            "db_price", "exchange_price", "notional_usd"]
    pd.testing.assert_frame_equal(result[keep], mirror[keep])
    # Unsigned order/slice quantities are equal; position nets change sign.
    sign = np.where(result["kind"] == "position_drift", -1.0, 1.0)
    for col in ("db_qty", "exchange_qty"):
        pd.testing.assert_series_equal((result[col] * sign).fillna(0.0) + 0.0,
                                       mirror[col].fillna(0.0) + 0.0, check_names=False)


@st.composite
def guarded_cases(draw):
    state, _ = draw(drifted_states())
    recent = {"db": set(), "ex": set(), "pos": set(), "slice": set()}
    for d in state.db_orders:
        if draw(st.booleans()):
            d["updated_at"] = RECENT_DB
            recent["db"].add((d["exchange_account"], d["client_order_id"]))
    for e in state.exchange_open_orders:
        if draw(st.booleans()):
            e["created_at"] = RECENT_EX
            recent["ex"].add((e["account"], e["exchange_order_id"]))
    for p in state.db_positions:
        if draw(st.integers(0, 3)) == 0:
            p["updated_at"] = RECENT_DB
            recent["pos"].add((p["exchange_account"], p["symbol"]))
    for s in state.db_trade_slices:
        if draw(st.booleans()):
            s["updated_at"] = RECENT_DB
            recent["slice"].add((s["exchange_account"], s["trade_id"]))
    return state, recent


def involves_recent(row: pd.Series, recent: dict) -> bool:
    account = row["exchange_account"]
    if row["kind"] == "position_drift":
        return (account, row["symbol"]) in recent["pos"]
    if row["kind"] == "ghost_slice":
        return (account, row["trade_id"]) in recent["slice"]
    db_side = row["kind"] != "missing_in_db" and (account, row["client_order_id"]) in recent["db"]
    ex_side = row["kind"] != "missing_from_exchange" and \
        (account, row["exchange_order_id"]) in recent["ex"]
    return db_side or ex_side


@SETTINGS
@given(guarded_cases())
def test_recency_guarded_rows_are_never_reported(case):
    state, recent = case
    guarded, unguarded = run(state), run_unguarded(state)
    assert not any(involves_recent(row, recent) for _, row in guarded.iterrows())
    keep = [not involves_recent(row, recent) for _, row in unguarded.iterrows()]
    expected = unguarded.loc[keep].reset_index(drop=True)
    pd.testing.assert_frame_equal(guarded.drop(columns="cycle_id"),
                                  expected.drop(columns="cycle_id"))
    assert guarded.attrs["suppressed_recent"] == len(unguarded) - len(guarded)


@SETTINGS
@given(consistent_states(), st.data())
def test_identical_states_stay_empty_whatever_is_recent(state, data):
    for d in state.db_orders:
        if data.draw(st.booleans()):
            d["updated_at"] = RECENT_DB
    assert run(state).empty
