"""The EXIT backfill's matching (core.backfill): one example per rule, and hypothesis properties
over random slices and fills (no double assignment, no qty overflow, nothing unattributed with the
strict flags, stale evidence never GO, determinism)."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_assets.core import frames as F
from recon_assets.core.backfill import (BACKFILL_DECISION_COLUMNS, SHORTFALL_COLUMNS,
                                        BackfillPolicy, Review,
                                        exit_backfill_decisions, exit_backfill_key)
from recon_assets_tests.core.test_diff import (OLD, READ_AT, db_order, ex_position, profile,
                                              trade_slice)
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
    assert run(slices, [ex_position(0.5)], [fill(0.5, coid="web_1")]).decisions.empty
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
    # On a leg in sync too (another unbooked fill, an untagged lost exit of the longs, offsets
    # it: found by the decision property), the short's own EXIT is booked; a foreign fill there
    # is no candidate; a side the app just changed waits a cycle.
    in_sync = [trade_slice("p1", "t1", 0.006, order_client_ids=["legacy-t1-E1"]),
               trade_slice("p2", "t17", 0.005, side="short")]
    (row,) = rows(run(in_sync, [ex_position(0.001)], [own, foreign]))
    assert (row["decision"], row["exchange_fill_id"]) == ("GO", own["exchange_fill_id"])
    changed = [slices[0], trade_slice("p2", "t17", 0.005, side="short",
                                      updated_at=READ_AT - pd.Timedelta(seconds=1))]
    assert run(changed, [ex_position(0.001)], [own]).decisions.empty
    # A symbol the exchange snapshot has no position row for is not judged at all.
    assert run(slices, [ex_position(0.001, symbol="ETH/USDT:USDT")], [own]).decisions.empty


# --------------------------------------------------------------------------- exact rows
# Issue 44: mutmut's survivors over core/backfill.py were columns and reasons no test compared
# whole (the key, awaiting_operator, assignable, the room a decision leaves, the strong and
# heuristic reasons).

def test_the_exit_backfill_key_never_changes_between_releases():
    """A re-run after an upgrade must find the booking it made before: the key is pinned."""
    assert exit_backfill_key("p1", "t1", 1, "A", BTC, "f1") == (
        "exit_backfill:p1:t1:1:7788192099ec6028327e17156721021b")


def test_a_go_row_is_exact_in_every_column():
    (row,) = rows(run([trade_slice("p1", "t1", 0.5)], flat(),
                      [fill(0.5, coid="rc.P1.t1.X1", fill_id="f1", order="o1")]))
    assert row == {
        "cycle_id": "c1", "exchange_account": "A", "symbol": BTC, "exchange_fill_id": "f1",
        "exchange_order_id": "o1", "client_order_id": "rc.P1.t1.X1", "fill_side": "sell",
        "fill_qty": 0.5, "fill_price": 105.0, "fee_usd": 0.02,
        "filled_at": OLD + pd.Timedelta(minutes=1), "profile_id": "p1", "trade_id": "t1",
        "slice_no": 1, "slice_side": "long", "slice_open_qty": 0.5, "slice_opened_at": OLD,
        "candidate_slices": ["p1/t1/1"], "match_mode": "client_order_id", "strong": True,
        "assignable": True, "decision": "GO",
        "reason": "its client order id rc.P1.t1.X1 is the EXIT id of trade t1 of profile p1",
        "idempotency_key": "exit_backfill:p1:t1:1:7788192099ec6028327e17156721021b",
        "awaiting_operator": False, "candidate_keys": [["p1", "t1", "1"]]}


def test_a_heuristic_no_go_row_is_exact_and_awaits_an_operator():
    slices = [trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.3)]
    (row,) = rows(run(slices, flat(), [fill(0.3, coid="web_manual", fill_id="f2", order="o2")]))
    assert {k: row[k] for k in ("profile_id", "trade_id", "slice_no", "slice_open_qty",
                                "candidate_slices", "match_mode", "strong", "assignable",
                                "decision", "reason", "idempotency_key", "awaiting_operator",
                                "candidate_keys")} == {
        "profile_id": "p2", "trade_id": "t2", "slice_no": 1, "slice_open_qty": 0.3,
        "candidate_slices": ["p1/t1/1", "p2/t2/1"], "match_mode": "qty_unique",
        "strong": False, "assignable": True, "decision": "NO_GO",
        "reason": "unattributed (client order id web_manual); p2/t2/1 is the only open long "
                  f"slice on {BTC} with the fill's qty 0.3 open; heuristic qty_unique would "
                  "match, held for an operator: RECON_EXIT_BACKFILL_ALLOW_HEURISTIC_MATCH is "
                  "false and RECON_EXIT_BACKFILL_REQUIRE_STRONG_ATTRIBUTION is true",
        "idempotency_key": exit_backfill_key("p2", "t2", 1, "A", BTC, "f2"),
        "awaiting_operator": True, "candidate_keys": [["p1", "t1", "1"], ["p2", "t2", "1"]]}
    (none,) = rows(run(slices + [trade_slice("p1", "t3", 0.3)], flat(),
                       [fill(0.3, coid=None, fill_id="f3")]))
    assert {k: none[k] for k in ("profile_id", "slice_open_qty", "match_mode", "assignable",
                                 "reason", "idempotency_key", "awaiting_operator")} == {
        "profile_id": None, "slice_open_qty": None, "match_mode": None, "assignable": False,
        "reason": "unattributed (client order id none), and no heuristic singles out a slice: "
                  f"3 open long slice(s) on {BTC}, 2 with the fill's qty 0.3 open",
        "idempotency_key": None, "awaiting_operator": True}
    (single,) = rows(run([trade_slice("p1", "t1", 0.5)], flat(), [fill(0.5, coid="web_9")]))
    assert single["reason"].startswith(
        f"unattributed (client order id web_9); p1/t1/1 is the only open slice on {BTC}; ")


def test_the_strong_attributions_say_exactly_why():
    slices = [trade_slice("p2", "t1", 0.5), trade_slice("p2", "t2", 0.5),
              trade_slice("p1", "t5", 0.5)]

    def reason(coid, book=slices, **kw):
        (row,) = rows(run(book, flat(), [fill(0.5, coid=coid, order="777")], **kw))
        return row["decision"], row["match_mode"], row["reason"], row["awaiting_operator"]

    assert reason("rc.P2.panic") == (
        "NO_GO", None, "its client order id rc.P2.panic carries sub tag P2 of profile p2, which "
                       f"has 2 open long slices on {BTC}: the id does not say which", False)
    assert reason("rc.P3.panic", profiles=[profile("p1"), profile("p2"), profile("p3")]) == (
        "NO_GO", None, "its client order id rc.P3.panic carries sub tag P3 of profile p3, which "
                       f"has no open long slice on {BTC}", False)
    assert reason("rc.P1.panic") == (
        "GO", "sub_tag", "its client order id rc.P1.panic carries sub tag P1 of profile p1, "
                         f"whose only open long slice on {BTC} this is", False)
    assert reason("web_x", hints={"777": ("p2", "t2")}) == (
        "GO", "trade_id_hint", "a trade id hint ties order 777 to trade t2 of profile p2", False)
    assert reason("web_x", hints={"777": ("p2", "t9")}) == (
        "NO_GO", None, "a trade id hint ties order 777 to trade t9 of profile p2, which has no "
                       f"open long slice on {BTC}", False)
    # A hint for another order ties nothing: the fill stays unattributed.
    assert reason("web_x", hints={"778": ("p2", "t2")})[1:] == (
        None, "unattributed (client order id web_x), and no heuristic singles out a slice: "
              f"3 open long slice(s) on {BTC}, 3 with the fill's qty 0.5 open", True)


def test_a_decision_leaves_the_room_it_took():
    """The exchange holds 0.5 of a 1.0 slice (shortfall 0.5): the first unattributed 0.3 takes
    0.3 of it, so the second 0.3 no longer fits the 0.2 left, though the slice has 0.7 open."""
    first = fill(0.3, coid=None, at=OLD + pd.Timedelta(minutes=1))
    second = fill(0.3, coid=None, at=OLD + pd.Timedelta(minutes=2))
    one_, two_ = rows(run([trade_slice("p1", "t1", 1.0)], [ex_position(0.5)], [first, second],
                          policy=HEURISTICS))
    assert (one_["decision"], one_["assignable"]) == ("GO", True)
    assert (two_["decision"], two_["assignable"]) == ("NO_GO", False)
    assert two_["reason"].endswith(f"but the fill's qty 0.3 exceeds the exchange's shortfall of "
                                   f"0.2 left on {BTC} (long)")


def test_stale_and_rejected_pairs_await_no_operator():
    slices = [trade_slice("p1", "t1", 0.5)]
    (stale,) = rows(run(slices, flat(), [fill(0.5, coid="web_1",
                                               at=OLD - pd.Timedelta(minutes=10))]))
    assert (stale["decision"], stale["assignable"], stale["awaiting_operator"]) == (
        "NO_GO", False, False)
    assert stale["reason"].endswith("but stale evidence: filled 10.0 min before slice p1/t1/1 "
                                    "opened, beyond the 5 min grace")
    f = fill(0.5, coid="web_2")
    pair = (BTC, f["exchange_fill_id"], "p1", "t1", 1)
    (rejected,) = rows(run(slices, flat(), [f], reviews={pair: Review("reject", 7)}))
    assert (rejected["reason"], rejected["awaiting_operator"]) == (
        "rejected by an operator (review 7)", False)
    (noted,) = rows(run(slices, flat(), [f], reviews={pair: Review("reject", 7, "not ours")}))
    assert noted["reason"] == "rejected by an operator (review 7: not ours)"


def test_a_fill_naming_another_profile_s_trade_is_no_candidate_on_a_leg_out_of_sync():
    """On the leg whose gap points long, only a short's own EXIT id is a candidate: an id with
    the same trade id under another profile's tag is not."""
    slices = [trade_slice("p1", "t1", 0.012, order_client_ids=["legacy-t1-E1"]),
              trade_slice("p2", "t17", 0.005, side="short")]
    other = fill(0.005, coid="rc.P1.t17.X2", side="buy")
    assert run(slices, [ex_position(0.001)], [other]).decisions.empty


def test_the_fit_and_time_helpers_at_their_edges():
    from recon_assets.core.backfill import _fits, _text, _time
    assert _fits(1.0 + 1e-6, 1.0, 1.0) and not _fits(1.0 + 2e-6, 1.0, 1.0)  # slack: a millionth step
    assert _time(pd.Timestamp("2026-01-01T00:00:00")) == pd.Timestamp("2026-01-01T00:00:00Z")
    assert _time(pd.Timestamp("2026-01-01T01:00:00+01:00")) == pd.Timestamp("2026-01-01T00:00:00Z")
    assert _time(None) is None and _time(pd.NaT) is None
    assert _text(float("nan")) is None and _text(pd.NaT) is None and _text(7) == "7"


def test_the_shortfalls_are_exact_per_symbol_and_side_with_what_the_go_fills_cover():
    """BTC: long 1.0 claimed, 0.4 held, a GO of 0.6. ETH: short 1.0 claimed, 0.3 held, a GO of
    0.2. SOL: long 0.5 claimed while the exchange is short 0.2 (it holds none of the long)."""
    eth, sol = "ETH/USDT:USDT", "SOL/USDT:USDT"
    slices = [trade_slice("p1", "t1", 1.0), trade_slice("p2", "t2", 1.0, side="short", symbol=eth),
              trade_slice("p1", "t3", 0.5, symbol=sol)]
    positions = [ex_position(0.4), ex_position(0.3, side="short", symbol=eth),
                 ex_position(0.2, side="short", symbol=sol)]
    fills = [fill(0.6, coid="rc.P1.t1.X1", fill_id="a"),
             fill(0.2, coid="rc.P2.t2.X1", side="buy", symbol=eth, fill_id="b")]
    result = run(slices, positions, fills)
    assert list(result.shortfalls.columns) == ["symbol", "side", "claimed_qty", "exchange_qty",
                                               "shortfall_qty", "go_qty", "slices"]
    got = [{k: (round(v, 9) if isinstance(v, float) else v) for k, v in r.items()}
           for r in result.shortfalls.to_dict("records")]
    assert got == [
        {"symbol": BTC, "side": "long", "claimed_qty": 1.0, "exchange_qty": 0.4,
         "shortfall_qty": 0.6, "go_qty": 0.6, "slices": ["p1/t1/1"]},
        {"symbol": eth, "side": "short", "claimed_qty": 1.0, "exchange_qty": 0.3,
         "shortfall_qty": 0.7, "go_qty": 0.2, "slices": ["p2/t2/1"]},
        {"symbol": sol, "side": "long", "claimed_qty": 0.5, "exchange_qty": 0.0,
         "shortfall_qty": 0.5, "go_qty": 0.0, "slices": ["p1/t3/1"]}]
    assert list(result.decisions.columns) == list(BACKFILL_DECISION_COLUMNS)
    assert [type(v) for v in result.decisions["slice_no"]] == [int, int]
    assert list(result.decisions.index) == [0, 1]


def test_an_unassigned_row_has_no_slice_number_and_the_others_whole_numbers():
    slices = [trade_slice("p1", "t1", 0.5), trade_slice("p1", "t2", 0.5),
              trade_slice("p1", "t3", 0.5)]
    result = run(slices, flat(), [fill(0.5, coid="rc.P1.t1.X1"), fill(0.5, coid=None)])
    assert [r["slice_no"] for r in rows(result)] == [1, None]


def test_every_symbol_and_fill_is_looked_at_past_one_that_is_skipped():
    """A symbol the snapshot has no row for, a leg in sync, a booked fill, a recent fill, a
    fill of the database's own order: each is skipped, never the ones after it."""
    eth = "ETH/USDT:USDT"
    slices = [trade_slice("p1", "t1", 0.5, symbol="ADA/USDT:USDT"), trade_slice("p1", "t2", 0.5),
              trade_slice("p1", "t3", 0.5, symbol=eth)]
    positions = [ex_position(0.5), ex_position(0.0, side="flat", symbol=eth)]  # no ADA row
    booked = fill(0.1, coid="rc.P1.t3.X1", symbol=eth, side="sell",
                  at=OLD + pd.Timedelta(minutes=1))
    recent = fill(0.1, coid="rc.P1.t3.X1", symbol=eth, at=READ_AT - pd.Timedelta(seconds=1))
    ours = fill(0.1, coid="rc.P1.t3.X9", symbol=eth, at=OLD + pd.Timedelta(minutes=2))
    wanted = fill(0.5, coid="rc.P1.t3.X1", symbol=eth, at=OLD + pd.Timedelta(minutes=3))
    result = run(slices, positions, [booked, recent, ours, wanted],
                 booked=frozenset({(eth, booked["exchange_fill_id"])}),
                 orders=[db_order("rc.P1.t3.X9", intent="EXIT", side="sell", symbol=eth)])
    assert [r["exchange_fill_id"] for r in rows(result)] == [wanted["exchange_fill_id"]]
    assert [r["symbol"] for r in result.shortfalls.to_dict("records")] == [eth]


def test_the_recency_guard_s_edges_for_fills_and_slices():
    """Exactly at the read less the guard: looked at now; after it: next cycle. With no guard
    given there is none (a fill a moment before the read is looked at)."""
    slices = [trade_slice("p1", "t1", 0.5, updated_at=READ_AT - pd.Timedelta(seconds=5))]
    at_edge = fill(0.5, coid="rc.P1.t1.X1", at=READ_AT - pd.Timedelta(seconds=5))
    assert rows(run(slices, flat(), [at_edge]))[0]["decision"] == "GO"
    just_now = fill(0.5, coid="rc.P1.t1.X1", at=READ_AT - pd.Timedelta(seconds=1))
    unguarded = exit_backfill_decisions(
        cycle_id="c1", account="A", slices=pd.DataFrame(slices, columns=list(F.DB_TRADE_SLICES)),
        profiles=pd.DataFrame([profile("p1")], columns=list(F.DB_PROFILES)),
        orders=pd.DataFrame([], columns=list(F.DB_ORDERS)),
        exchange_positions=pd.DataFrame(flat(), columns=list(F.EXCHANGE_POSITIONS)),
        fills=pd.DataFrame([just_now], columns=list(F.EXCHANGE_FILLS)), policy=STRICT,
        db_read_at=READ_AT)
    assert rows(unguarded)[0]["decision"] == "GO"


def test_slices_not_open_are_never_candidates():
    slices = [trade_slice("p1", "t1", 0.5), trade_slice("p1", "t2", 0.5, exit_qty=0.5),
              trade_slice("p1", "t3", 0.5, status="closed")]
    (row,) = rows(run(slices, flat(), [fill(0.5, coid=None)]))
    assert row["candidate_slices"] == ["p1/t1/1"]


def test_fills_without_a_position_side_column_and_a_fill_without_a_time():
    slices = [trade_slice("p1", "t1", 0.5)]
    frame = pd.DataFrame([fill(0.5, coid="rc.P1.t1.X1")],
                         columns=[c for c in F.EXCHANGE_FILLS if c != "position_side"])
    result = exit_backfill_decisions(
        cycle_id="c1", account="A", slices=pd.DataFrame(slices, columns=list(F.DB_TRADE_SLICES)),
        profiles=pd.DataFrame([profile("p1")], columns=list(F.DB_PROFILES)),
        orders=pd.DataFrame([], columns=list(F.DB_ORDERS)),
        exchange_positions=pd.DataFrame(flat(), columns=list(F.EXCHANGE_POSITIONS)),
        fills=frame, policy=STRICT, db_read_at=READ_AT, recency_guard_s=5.0)
    assert rows(result)[0]["decision"] == "GO"
    # A fill without a time is never GO (its age cannot be checked), and the others are
    # decided beside it.
    untimed = fill(0.5, coid="rc.P1.t1.X1", at=None, fill_id="u")
    timed = fill(0.5, coid="rc.P1.t1.X1", fill_id="v")
    by_id = {r["exchange_fill_id"]: r for r in rows(run(slices, flat(), [timed, untimed]))}
    assert (by_id["u"]["decision"], by_id["v"]["decision"]) == ("NO_GO", "GO")


def test_the_quantity_step_is_the_tolerance_of_the_book_and_of_a_size_match():
    slices = [trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.3)]
    # 0.5 + 0.3 claimed, the exchange holds 0.8004: within a step, in sync: no candidates.
    assert run(slices, [ex_position(0.8004)], [fill(0.3, coid=None)]).decisions.empty
    # Flat: a fill of 0.3004 is within a step of p2's 0.3, which qty_unique names.
    (row,) = rows(run(slices, flat(), [fill(0.3004, coid=None)]))
    assert (row["match_mode"], row["trade_id"]) == ("qty_unique", "t2")


def test_an_unknown_tag_names_this_account():
    (row,) = rows(run([trade_slice("p1", "t1", 0.5)], flat(), [fill(0.5, coid="rc.ZZ.t1.X1")]))
    assert row["reason"] == ("its client order id rc.ZZ.t1.X1 carries sub tag ZZ, which no "
                             "profile of A has: not this account's profiles' to book")


def test_a_hedge_mode_short_s_own_exit_on_a_short_leg_whose_gap_points_long():
    """Hedge mode: the short leg holds less than its slices claim only because of a short's own
    unbooked EXIT fill on that leg; the fill names its trade and is GO there."""
    long_leg = ex_position(0.5, side="long") | {"position_side": "long"}
    short_leg = ex_position(0.2, side="short") | {"position_side": "short"}
    slices = [trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.5, side="short")]
    own = fill(0.3, coid="rc.P2.t2.X1", side="buy") | {"position_side": "short"}
    (row,) = rows(run(slices, [long_leg, short_leg], [own]))
    assert (row["decision"], row["trade_id"], row["slice_side"]) == ("GO", "t2", "short")


# --------------------------------------------------------------------------- a trade's slices

def _at(minutes: float) -> pd.Timestamp:
    return OLD + pd.Timedelta(minutes=minutes)


def test_a_slice_without_an_opened_time_is_passed_over_for_the_trade_s_next_one():
    """The trade's oldest slice has no opened time (the fill's age cannot be checked against
    it): its own EXIT fill goes to the next slice; with no other slice it is NO_GO, saying so."""
    undated = trade_slice("p1", "t1", 0.3, slice_no=1) | {"opened_at": None}
    dated = trade_slice("p1", "t1", 0.3, slice_no=2)
    (row,) = rows(run([undated, dated], flat(), [fill(0.3, coid="rc.P1.t1.X1")]))
    assert (row["decision"], row["slice_no"]) == ("GO", 2)
    (alone,) = rows(run([undated], flat(), [fill(0.3, coid="rc.P1.t1.X1")]))
    assert (alone["decision"], alone["assignable"]) == ("NO_GO", False)
    assert alone["reason"].endswith(
        "but slice p1/t1/1 has no opened time: the fill's age cannot be checked"), alone["reason"]


def test_a_slice_the_fill_is_older_than_or_too_small_for_is_passed_over_for_the_next_one():
    """Slice 1 opened after the fill (beyond the grace), or has less open than the fill: the
    trade's own EXIT fill goes to slice 2. When every slice opened after it, no operator can
    turn it either (it cannot be their exit)."""
    late = trade_slice("p1", "t1", 0.3, slice_no=1) | {"opened_at": _at(30)}
    small = trade_slice("p1", "t1", 0.1, slice_no=1)
    fits = trade_slice("p1", "t1", 0.5, slice_no=2)
    own = fill(0.3, coid="rc.P1.t1.X1", at=_at(1))
    for first in (late, small):
        (row,) = rows(run([first, fits], flat(), [own]))
        assert (row["decision"], row["slice_no"]) == ("GO", 2), row["reason"]
    # Exactly at the grace's edge (the slice opened 5 min after the fill) is not stale.
    edge = trade_slice("p1", "t1", 0.3, slice_no=1) | {"opened_at": _at(6)}
    (row,) = rows(run([edge], flat(), [own]))
    assert (row["decision"], row["slice_no"]) == ("GO", 1), row["reason"]
    both_late = [late, fits | {"opened_at": _at(40)}]
    (row,) = rows(run(both_late, flat(), [own]))
    assert (row["decision"], row["awaiting_operator"]) == ("NO_GO", False), row["reason"]


def test_an_approved_pair_takes_the_room_it_books():
    """An operator approves an unattributed fill of 0.3 for the slice (shortfall 0.5): it is GO
    and takes 0.3 of the room, so the next unattributed 0.3 no longer fits the 0.2 left."""
    first = fill(0.3, coid="web_1", at=_at(1))
    second = fill(0.3, coid="web_2", at=_at(2))
    approved = {(BTC, first["exchange_fill_id"], "p1", "t1", 1): Review("approve", 3)}
    one_, two_ = rows(run([trade_slice("p1", "t1", 1.0)], [ex_position(0.5)], [first, second],
                          reviews=approved))
    assert (one_["decision"], two_["assignable"]) == ("GO", False), (one_, two_)
    assert two_["reason"].endswith("exceeds the exchange's shortfall of 0.2 left on "
                                   f"{BTC} (long)"), two_["reason"]


def test_an_operator_s_candidates_are_the_slices_the_fill_is_not_older_than():
    """An unattributed fill awaiting an operator lists the slices it could be the exit of: not
    one that opened after it beyond the grace, and one that opened exactly at the grace's edge."""
    edge = trade_slice("p2", "t2", 0.3) | {"opened_at": _at(6)}  # fill at 1 = 6 - 5 min grace
    late = trade_slice("p3", "t3", 0.3) | {"opened_at": _at(20)}
    profiles = [profile("p1"), profile("p2"), profile("p3")]
    (row,) = rows(run([trade_slice("p1", "t1", 0.3), edge, late], flat(),
                      [fill(0.3, coid="web_1", at=_at(1))], profiles=profiles))
    assert row["awaiting_operator"]
    assert row["candidate_keys"] == [["p1", "t1", "1"], ["p2", "t2", "1"]]


def test_the_recency_guard_is_off_by_default():
    """Without a guard, a fill half a second before the database read is looked at now."""
    just = fill(0.5, coid="rc.P1.t1.X1", at=READ_AT - pd.Timedelta(milliseconds=500))
    result = exit_backfill_decisions(
        cycle_id="c1", account="A",
        slices=pd.DataFrame([trade_slice("p1", "t1", 0.5)], columns=list(F.DB_TRADE_SLICES)),
        profiles=pd.DataFrame([profile("p1")], columns=list(F.DB_PROFILES)),
        orders=pd.DataFrame([], columns=list(F.DB_ORDERS)),
        exchange_positions=pd.DataFrame(flat(), columns=list(F.EXCHANGE_POSITIONS)),
        fills=pd.DataFrame([just], columns=list(F.EXCHANGE_FILLS)), policy=STRICT,
        db_read_at=READ_AT)
    assert [r["decision"] for r in rows(result)] == ["GO"]


def test_a_book_in_sync_has_an_empty_shortfalls_frame_with_its_columns():
    result = run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5)], [])
    assert result.shortfalls.empty
    assert list(result.shortfalls.columns) == list(SHORTFALL_COLUMNS)


@pytest.mark.parametrize("hedged", [False, True])
def test_a_gap_the_database_s_own_order_explains_is_no_shortfall(hedged):
    """The exchange holds 0.3 of a 0.5 slice because the trade's EXIT order (in the database,
    still open there) filled 0.2 not booked yet: the lifecycle correction books it, so there is
    no shortfall and no candidate; one-way and on a hedge-mode long leg."""
    leg = {"position_side": "long"} if hedged else {}
    position = ex_position(0.3) | leg
    positions = [position, ex_position(0.0, side="flat") | {"position_side": "short"}] \
        if hedged else [position]
    exit_order = db_order("rc.P1.t1.X1", side="sell", intent="EXIT", qty=0.5, eoid="o77")
    filled = fill(0.2, coid="rc.P1.t1.X1", order="o77") | leg
    foreign = fill(0.2, coid="web_9") | leg
    result = run([trade_slice("p1", "t1", 0.5)], positions, [filled, foreign],
                 orders=[exit_order])
    assert result.shortfalls.empty, result.shortfalls
    assert result.decisions.empty, rows(result)


def test_a_side_held_back_by_the_recency_guard_leaves_the_other_side_s_shortfall():
    """Hedge mode, both legs short of their slices; a slice of the long side changed after the
    database read less the guard: that side waits a cycle, the short side's shortfall stays."""
    changed = trade_slice("p1", "t1", 0.5, updated_at=READ_AT)
    short = trade_slice("p2", "t2", 0.5, side="short")
    positions = [ex_position(0.0, side="flat") | {"position_side": "long"},
                 ex_position(0.0, side="flat") | {"position_side": "short"}]
    result = run([changed, short], positions, [])
    assert [(r["side"], r["shortfall_qty"]) for r in result.shortfalls.to_dict("records")] == [
        ("short", 0.5)]


def test_a_gap_below_one_step_is_in_sync_on_the_leg_and_on_each_side():
    """The book is in sync within one quantity step (0.001): a foreign fill of the difference
    is no candidate (no shortfall). A side whose shortfall is below a step has no row, beside a
    side that has one (the exchange flat for a long of 0.0005 and a short of 0.002)."""
    foreign = fill(0.0005, coid="web_1")
    assert run([trade_slice("p1", "t1", 0.5)], [ex_position(0.4995)], [foreign]).decisions.empty
    tiny = trade_slice("p1", "t1", 0.0005)
    short = trade_slice("p2", "t2", 0.002, side="short")
    result = run([tiny, short], flat(), [])
    assert [(r["side"], r["shortfall_qty"]) for r in result.shortfalls.to_dict("records")] == [
        ("short", 0.002)]


def test_a_hedge_short_s_own_exit_on_a_leg_holding_more_than_its_slices():
    """Hedge mode: the short leg holds 0.8 (a short entry nobody recorded) while its slice
    claims 0.5, which its own EXIT fill (not booked) closed: the leg is out of sync, its gap
    points long, and the fill naming its trade is GO there."""
    long_leg = ex_position(0.5, side="long") | {"position_side": "long"}
    short_leg = ex_position(0.8, side="short") | {"position_side": "short"}
    slices = [trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.5, side="short")]
    own = fill(0.5, coid="rc.P2.t2.X1", side="buy") | {"position_side": "short"}
    (row,) = rows(run(slices, [long_leg, short_leg], [own]))
    assert (row["decision"], row["trade_id"]) == ("GO", "t2"), row["reason"]


def test_a_fill_skipped_before_a_candidate_does_not_end_the_look():
    """A booked fill, or (hedge mode) a fill that opened its leg rather than exiting it, listed
    before a candidate: the candidate is still looked at."""
    booked = fill(0.2, coid="rc.P1.t1.X1")
    candidate = fill(0.3, coid="rc.P1.t1.X2")
    result = run([trade_slice("p1", "t1", 0.5)], [ex_position(0.2)], [booked, candidate],
                 booked=frozenset({(BTC, booked["exchange_fill_id"])}))
    assert [r["exchange_fill_id"] for r in rows(result)] == [candidate["exchange_fill_id"]]
    long_leg = ex_position(0.2, side="long") | {"position_side": "long"}
    short_leg = ex_position(0.0, side="flat") | {"position_side": "short"}
    entry = fill(0.1, coid="web_3", side="sell") | {"position_side": "short"}
    exit_ = fill(0.3, coid="rc.P1.t1.X2") | {"position_side": "long"}
    result = run([trade_slice("p1", "t1", 0.5)], [long_leg, short_leg], [entry, exit_])
    assert [r["exchange_fill_id"] for r in rows(result)] == [exit_["exchange_fill_id"]]
