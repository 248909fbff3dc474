"""The EXIT backfill's matching (core.backfill): one example per rule, and hypothesis properties
over random slices and fills (no double assignment, no qty overflow, nothing unattributed with the
strict flags, stale evidence never GO, determinism)."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_assets.core import frames as F
from recon_assets.core.backfill import (BackfillPolicy, Review, exit_backfill_decisions,
                                        exit_backfill_key)
from recon_assets_tests.core.test_diff import OLD, READ_AT, db_order, ex_position, profile, trade_slice
from recon_assets_tests.harness.examples import examples

pytestmark = pytest.mark.unit

BTC = "BTC/USDT:USDT"
STRICT = BackfillPolicy()  # the runbook's defaults
HEURISTICS = BackfillPolicy(require_strong_attribution=False, allow_heuristic_match=True)
_ids = iter(range(1000, 10**6))


def fill(qty, *, coid=None, side="sell", at=OLD + pd.Timedelta(minutes=1), price=105.0,
         fee=0.02, order=None, fill_id=None, symbol=BTC):
    fid = str(fill_id or next(_ids))
    return {"account": "A", "symbol": symbol, "exchange_fill_id": fid,
            "exchange_order_id": order or f"o{fid}", "client_order_id": coid, "side": side,
            "qty": qty, "price": price, "fee_usd": fee, "fee_asset": "USDT", "fee_amount": fee,
            "notional_usd": qty * price, "filled_at": at, "fetched_at": READ_AT}


def run(slices, positions, fills, *, policy=STRICT, orders=(), profiles=None, **kw):
    return exit_backfill_decisions(
        cycle_id="c1", account="A",
        slices=pd.DataFrame(slices, columns=list(F.DB_TRADE_SLICES)),
        profiles=pd.DataFrame(profiles or [profile("p1"), profile("p2")],
                              columns=list(F.DB_PROFILES)),
        orders=pd.DataFrame(list(orders), columns=list(F.DB_ORDERS)),
        exchange_positions=pd.DataFrame(positions, columns=list(F.EXCHANGE_POSITIONS)),
        fills=pd.DataFrame(fills, columns=list(F.EXCHANGE_FILLS)), policy=policy,
        db_read_at=READ_AT, recency_guard_s=5.0, **kw)


def rows(result):
    return result.decisions.to_dict("records")


def flat():
    return [ex_position(0.0, side="flat")]


def test_the_deterministic_exit_id_of_the_slice_s_trade_is_go():
    (row,) = rows(run([trade_slice("p1", "t1", 0.5)], flat(), [fill(0.5, coid="rc.P1.t1.X1")]))
    assert (row["decision"], row["match_mode"], row["profile_id"], row["trade_id"]) == (
        "GO", "client_order_id", "p1", "t1")
    assert row["idempotency_key"] == exit_backfill_key("p1", "t1", 1, "A", BTC,
                                                       row["exchange_fill_id"])
    assert row["fill_price"] == 105.0 and row["fee_usd"] == 0.02


def test_a_fill_carrying_b_s_sub_tag_goes_to_b_only():
    slices = [trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.5)]
    (row,) = rows(run(slices, flat(), [fill(0.5, coid="rc.P2.t2.X1")]))
    assert (row["decision"], row["profile_id"], row["trade_id"]) == ("GO", "p2", "t2")
    # A tag without a trade: the profile's only slice on the symbol and side.
    (row,) = rows(run(slices, flat(), [fill(0.5, coid="rc.P2.panic-close")]))
    assert (row["decision"], row["match_mode"], row["profile_id"]) == ("GO", "sub_tag", "p2")


def test_a_tag_with_several_slices_of_its_profile_does_not_say_which():
    slices = [trade_slice("p2", "t1", 0.5), trade_slice("p2", "t2", 0.5)]
    (row,) = rows(run(slices, flat(), [fill(0.5, coid="rc.P2.panic-close")]))
    assert row["decision"] == "NO_GO" and "does not say which" in row["reason"]


def test_an_id_naming_another_trade_or_an_unknown_tag_is_never_guessed_at():
    slices = [trade_slice("p1", "t1", 0.5)]
    for coid, why in (("rc.P1.t9.X1", "names trade t9"), ("rc.ZZ.t1.X1", "no profile"),
                      ("rc.P1.t1.E2", "ENTRY order")):
        (row,) = rows(run(slices, flat(), [fill(0.5, coid=coid)], policy=HEURISTICS))
        assert row["decision"] == "NO_GO" and why in row["reason"], coid
        assert row["match_mode"] is None


def test_a_trade_id_hint_ties_a_foreign_order_to_its_trade():
    slices = [trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.5)]
    (row,) = rows(run(slices, flat(), [fill(0.5, coid="web_x", order="777")],
                      hints={"777": ("p2", "t2")}))
    assert (row["decision"], row["match_mode"], row["trade_id"]) == ("GO", "trade_id_hint", "t2")


def test_grace_window_rejects_10_minutes_before_accepts_3():
    slices = [trade_slice("p1", "t1", 0.5)]
    early = fill(0.5, coid="rc.P1.t1.X1", at=OLD - pd.Timedelta(minutes=10))
    inside = fill(0.5, coid="rc.P1.t1.X1", at=OLD - pd.Timedelta(minutes=3))
    (row,) = rows(run(slices, flat(), [early]))
    assert row["decision"] == "NO_GO" and "stale evidence" in row["reason"]
    assert "10.0 min before" in row["reason"] and "5 min grace" in row["reason"]
    (row,) = rows(run(slices, flat(), [inside]))
    assert row["decision"] == "GO"


def test_single_open_trade_is_no_go_by_default_and_go_when_heuristics_are_allowed():
    slices, fills = [trade_slice("p1", "t1", 0.5)], [fill(0.5, coid=None)]
    (row,) = rows(run(slices, flat(), fills))
    assert (row["decision"], row["match_mode"], row["trade_id"]) == ("NO_GO", "single_open_trade", "t1")
    assert "would match" in row["reason"] and "ALLOW_HEURISTIC_MATCH is false" in row["reason"]
    (row,) = rows(run(slices, flat(), fills, policy=HEURISTICS))
    assert (row["decision"], row["match_mode"]) == ("GO", "single_open_trade")
    # Allowing heuristics while strong attribution is required still holds it back.
    (row,) = rows(run(slices, flat(), fills, policy=BackfillPolicy(allow_heuristic_match=True)))
    assert row["decision"] == "NO_GO" and "REQUIRE_STRONG_ATTRIBUTION is true" in row["reason"]


def test_qty_unique_picks_the_only_slice_with_the_fill_s_qty():
    slices = [trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.3)]
    fills = [fill(0.3, coid="web_manual")]
    (row,) = rows(run(slices, flat(), fills))
    assert (row["decision"], row["match_mode"], row["trade_id"]) == ("NO_GO", "qty_unique", "t2")
    (row,) = rows(run(slices, flat(), fills, policy=HEURISTICS))
    assert (row["decision"], row["match_mode"], row["trade_id"]) == ("GO", "qty_unique", "t2")
    # Two slices with that qty: nothing singles one out.
    (row,) = rows(run(slices + [trade_slice("p1", "t3", 0.3)], flat(), fills, policy=HEURISTICS))
    assert (row["decision"], row["match_mode"], row["trade_id"]) == ("NO_GO", None, None)
    assert row["candidate_slices"] == ["p1/t1/1", "p1/t3/1", "p2/t2/1"]


def test_a_partial_exit_fits_the_shortfall_and_an_overflowing_fill_is_refused():
    slices = [trade_slice("p1", "t1", 1.0)]
    (row,) = rows(run(slices, [ex_position(0.6)], [fill(0.4, coid="rc.P1.t1.X1")]))
    assert row["decision"] == "GO"
    # The slice's own EXIT id is proof on its own: booked beyond the net shortfall (what else
    # moved the net is the diff's and the watchdog's to see) ...
    (row,) = rows(run(slices, [ex_position(0.6)], [fill(0.5, coid="rc.P1.t1.X1")]))
    assert row["decision"] == "GO" and row["match_mode"] == "client_order_id"
    # ... a heuristic match is not: it must fit in what the exchange shows missing.
    result = run(slices, [ex_position(0.6)], [fill(0.5, coid=None)], policy=HEURISTICS)
    assert rows(result)[0]["decision"] == "NO_GO" and "shortfall" in rows(result)[0]["reason"]
    (row,) = rows(run(slices, flat(), [fill(1.5, coid="rc.P1.t1.X1")]))
    assert row["decision"] == "NO_GO" and "never split" in row["reason"]


def test_no_shortfall_no_candidates_and_booked_db_order_and_recent_fills_are_not_candidates():
    slices = [trade_slice("p1", "t1", 0.5)]
    assert run(slices, [ex_position(0.5)], [fill(0.5, coid="rc.P1.t1.X1")]).decisions.empty
    booked = fill(0.5, coid="rc.P1.t1.X1")
    result = run(slices, flat(), [booked], booked=frozenset({(BTC, booked["exchange_fill_id"])}))
    assert result.decisions.empty
    ours = fill(0.5, coid="rc.P1.t1.X1")
    result = run(slices, flat(), [ours], orders=[db_order("rc.P1.t1.X1", intent="EXIT",
                                                          side="sell")])
    assert result.decisions.empty and result.left_to_lifecycle == [ours["exchange_fill_id"]]
    recent = fill(0.5, coid="rc.P1.t1.X1", at=READ_AT - pd.Timedelta(seconds=1))
    result = run(slices, flat(), [recent])
    assert result.decisions.empty and result.held_recent == [recent["exchange_fill_id"]]
    # A side whose slices the trading app changed a moment before the read waits a cycle.
    just_changed = [trade_slice("p1", "t1", 0.5, updated_at=READ_AT - pd.Timedelta(seconds=1))]
    result = run(just_changed, flat(), [fill(0.5, coid="rc.P1.t1.X1")])
    assert result.decisions.empty and result.held_slices == ["p1/t1/1"]
    assert result.shortfalls.empty
    # A fill on the slice's own side is no exit.
    assert run(slices, flat(), [fill(0.5, coid="rc.P1.t1.X1", side="buy")]).decisions.empty


def test_strong_fills_take_the_room_before_a_heuristic_does():
    slices = [trade_slice("p1", "t1", 0.5)]
    weak = fill(0.5, coid=None, at=OLD + pd.Timedelta(minutes=1))
    strong = fill(0.5, coid="rc.P1.t1.X1", at=OLD + pd.Timedelta(minutes=2))
    by_fill = {r["exchange_fill_id"]: r for r in rows(run(slices, flat(), [weak, strong],
                                                          policy=HEURISTICS))}
    assert by_fill[strong["exchange_fill_id"]]["decision"] == "GO"
    assert by_fill[weak["exchange_fill_id"]]["decision"] == "NO_GO"


def test_an_operator_s_reject_keeps_a_pair_no_go_and_an_approval_makes_it_go():
    slices, f = [trade_slice("p1", "t1", 0.5)], fill(0.5, coid="web_manual")
    pair = (BTC, f["exchange_fill_id"], "p1", "t1", 1)
    (row,) = rows(run(slices, flat(), [f], policy=HEURISTICS,
                      reviews={pair: Review("reject", 7, "not ours")}))
    assert row["decision"] == "NO_GO" and "review 7: not ours" in row["reason"]
    (row,) = rows(run(slices, flat(), [f], reviews={pair: Review("approve", 8)}))
    assert row["decision"] == "GO" and "approved by an operator (review 8)" in row["reason"]


def test_a_trade_with_two_open_slices_fills_the_oldest_first():
    slices = [trade_slice("p1", "t1", 0.3, slice_no=1), trade_slice("p1", "t1", 0.3, slice_no=2)]
    fills = [fill(0.3, coid="rc.P1.t1.X1", at=OLD + pd.Timedelta(minutes=m)) for m in (1, 2)]
    assert [r["slice_no"] for r in rows(run(slices, flat(), fills))] == [1, 2]


# --------------------------------------------------------------------------- properties
SIDES = st.sampled_from(["long", "short"])


@st.composite
def books(draw):
    n = draw(st.integers(1, 4))
    slices = [trade_slice(draw(st.sampled_from(["p1", "p2"])), f"t{i}",
                          draw(st.sampled_from([0.1, 0.2, 0.3, 0.5, 1.0])), side=draw(SIDES))
              for i in range(n)]
    position = draw(st.sampled_from([[ex_position(0.0, side="flat")], [ex_position(0.2)],
                                     [ex_position(0.3, side="short")]]))
    fills = []
    for _ in range(draw(st.integers(0, 6))):
        target = draw(st.sampled_from(slices))
        coid = draw(st.sampled_from([
            None, "web_x", f"rc.{target['profile_id'].upper()}.{target['trade_id']}.X1",
            f"rc.{target['profile_id'].upper()}.free", "rc.P1.t99.X1"]))
        fills.append(fill(draw(st.sampled_from([0.1, 0.2, 0.3, 0.5, 1.0])), coid=coid,
                          side=draw(st.sampled_from(["buy", "sell"])),
                          at=OLD + pd.Timedelta(minutes=draw(st.integers(-15, 20)))))
    policy = BackfillPolicy(draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from([0, 5])))
    return slices, position, fills, policy


@settings(max_examples=examples(300), deadline=None)
@given(books())
def test_properties_of_every_assignment(book):
    slices, position, fills, policy = book
    result = run(slices, position, fills, policy=policy)
    d = result.decisions
    go = d[d["decision"] == "GO"]
    # A fill is assigned to at most one slice (one row per fill at all).
    assert d["exchange_fill_id"].is_unique
    # No slice receives more exit qty than it has open, nor a side more than the shortfall.
    open_qty = {(s["profile_id"], s["trade_id"], 1): s["virtual_open_qty"] for s in slices}
    for key, taken in go.groupby(["profile_id", "trade_id", "slice_no"])["fill_qty"].sum().items():
        assert taken <= open_qty[(key[0], key[1], int(key[2]))] + 1e-9
    # Heuristic matches stay within the shortfall; the slice's own EXIT id is proof on its own.
    guessed = go[go["match_mode"] != "client_order_id"]
    for s in result.shortfalls.itertuples():
        mine = guessed[(guessed["symbol"] == s.symbol) & (guessed["slice_side"] == s.side)]
        assert mine["fill_qty"].sum() <= s.shortfall_qty + 1e-9
    # With the strict flags, nothing unattributed is GO.
    if policy.require_strong_attribution or not policy.allow_heuristic_match:
        assert go["strong"].all()
    # Stale evidence is never GO.
    grace = pd.Timedelta(minutes=policy.grace_minutes)
    assert (pd.to_datetime(go["filled_at"], utc=True)
            >= pd.to_datetime(go["slice_opened_at"], utc=True) - grace).all()
    # GO rows are exits: the opposite side of their slice.
    assert ((go["slice_side"] == "long") == (go["fill_side"] == "sell")).all()
    # Determinism: the same inputs, in any order, give the same rows in the same order.
    again = run(list(reversed(slices)), position, list(reversed(fills)), policy=policy).decisions
    pd.testing.assert_frame_equal(d.reset_index(drop=True), again.reset_index(drop=True))


def test_a_hedge_mode_sell_that_opened_a_short_is_no_exit_of_a_long():
    """Hedge mode: the long leg is flat (the long slice's exit is missing), the short leg holds
    a new short. A sell on the short leg opened that short: never booked as the long's exit; a
    sell on the long leg is (GO by its client order id)."""
    legs = [ex_position(0.0, side="flat") | {"position_side": "long"},
            ex_position(0.5, side="short") | {"position_side": "short"}]
    slices = [trade_slice("p1", "t1", 0.5)]
    opened_short = fill(0.5, coid="rc.P1.t1.X1") | {"position_side": "short"}
    assert rows(run(slices, legs, [opened_short])) == []
    closed_long = fill(0.5, coid="rc.P1.t1.X1") | {"position_side": "long"}
    (row,) = rows(run(slices, legs, [closed_long]))
    assert (row["decision"], row["trade_id"]) == ("GO", "t1")
    # A hedge-mode fill that does not say its leg is no exit anyone books.
    unknown = fill(0.5, coid="rc.P1.t1.X1") | {"position_side": None}
    assert rows(run(slices, legs, [unknown])) == []


def test_a_trade_s_own_exit_fill_is_go_on_a_leg_whose_gap_points_the_other_way():
    """One-way leg: legacy longs a close before the trade history ended (no fill explains them)
    and an attributable short whose own EXIT fill the app never booked. The leg's gap points
    long, yet the short's own EXIT id is proof on its own (found by the decision property)."""
    slices = [trade_slice("p1", "t1", 0.012, order_client_ids=["legacy-t1-E1"]),
              trade_slice("p2", "t17", 0.005, side="short")]
    own = fill(0.005, coid="rc.P2.t17.X2", side="buy")
    foreign = fill(0.005, coid="web_1", side="buy")
    (row,) = rows(run(slices, [ex_position(0.001)], [own]))
    assert (row["decision"], row["match_mode"], row["trade_id"]) == ("GO", "client_order_id", "t17")
    # Nothing else on that side becomes a candidate: the side has no shortfall.
    assert [r["exchange_fill_id"] for r in rows(run(slices, [ex_position(0.001)],
                                                    [own, foreign]))] == [own["exchange_fill_id"]]
    # A book in sync stays untouched, and a side the app just changed waits a cycle.
    in_sync = [trade_slice("p1", "t1", 0.006, order_client_ids=["legacy-t1-E1"]),
               trade_slice("p2", "t17", 0.005, side="short")]
    assert run(in_sync, [ex_position(0.001)], [own]).decisions.empty
    changed = [slices[0], trade_slice("p2", "t17", 0.005, side="short",
                                      updated_at=READ_AT - pd.Timedelta(seconds=1))]
    assert run(changed, [ex_position(0.001)], [own]).decisions.empty
