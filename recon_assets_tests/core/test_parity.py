"""The parity heartbeat's decisions (core.parity): examples per rule, and hypothesis properties
over random streak histories."""

from collections import Counter

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_assets.core import frames as F
from recon_assets.core.parity import (PARITY_CHECK_COLUMNS, ParityPolicy, Streak, parity_checks,
                                      slice_decision, synthetic_exit_key)
from recon_assets.core.rules import (AMBIGUOUS, BACKFILL, BLOCKED, CONFIRMING, HELD, QUARANTINE,
                                     SYNTHETIC_EXIT)
from recon_assets_tests.core.test_diff import OLD, READ_AT, ex_position, profile, trade_slice
from recon_assets_tests.harness.examples import examples

pytestmark = pytest.mark.unit

BTC = "BTC/USDT:USDT"
N3 = ParityPolicy(confirmations=3, require_attribution=True, dry_run=False)


def run(slices, positions, *, streaks=None, previous="c0", cycle="c1", policy=N3, profiles=None,
        **kw):
    return parity_checks(
        cycle_id=cycle, account="A", previous_cycle_id=previous,
        slices=pd.DataFrame(slices, columns=list(F.DB_TRADE_SLICES)),
        profiles=pd.DataFrame(profiles or [profile("p1"), profile("p2")], columns=list(F.DB_PROFILES)),
        exchange_positions=pd.DataFrame(positions, columns=list(F.EXCHANGE_POSITIONS)),
        streaks=streaks or {}, policy=policy, db_read_at=READ_AT, recency_guard_s=5.0, **kw)


def one(checks, trade="t1"):
    (row,) = checks[checks["trade_id"] == trade].to_dict("records")
    return row


def flat(mark=200.0):
    return [ex_position(0.0, side="flat", mark=mark)]


def test_a_supported_slice_is_cleared():
    row = one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5)]))
    assert (row["decision"], row["ghost"], row["streak"]) == ("cleared", False, 0)


def test_a_ghost_confirms_then_closes_on_exactly_the_nth_consecutive_cycle():
    slices, positions = [trade_slice("p1", "t1", 0.5)], flat()
    streaks = {}
    decisions = []
    for i in range(1, 5):
        row = one(run(slices, positions, streaks=streaks, previous=f"c{i - 1}", cycle=f"c{i}"))
        decisions.append((row["decision"], row["streak"]))
        streaks = {("p1", "t1", 1): Streak(row["streak"], row["streak_started_cycle"], f"c{i}")}
    assert decisions == [("confirming", 1), ("confirming", 2), ("synthetic_exit", 3),
                         ("synthetic_exit", 4)]
    row = one(run(slices, positions, streaks={("p1", "t1", 1): Streak(2, "c1", "c2")},
                  previous="c2", cycle="c3"))
    assert row["idempotency_key"] == synthetic_exit_key("p1", "t1", 1, "c1")
    assert row["mark_price"] == 200.0 and row["mismatch_notional_usd"] == pytest.approx(100.0)


def test_a_cycle_that_could_not_check_breaks_the_streak():
    """The slice was last seen in c2, but the account's previous cycle is c3 (it failed)."""
    row = one(run([trade_slice("p1", "t1", 0.5)], flat(),
                  streaks={("p1", "t1", 1): Streak(2, "c1", "c2")}, previous="c3", cycle="c4"))
    assert (row["decision"], row["streak"], row["streak_started_cycle"]) == ("confirming", 1, "c4")


def test_an_unattributed_ghost_is_quarantined_never_closed():
    legacy = trade_slice("p1", "t1", 0.5, order_client_ids=["legacy42"])
    row = one(run([legacy], flat(), streaks={("p1", "t1", 1): Streak(5, "c0", "c0")}))
    assert row["decision"] == "quarantine" and not row["attributable"]
    assert row["reason"] == "confirmed 6 of 3, but not attributable to profile p1 by its orders' sub tag"
    assert "legacy42" in row["attribution"]
    # Without the flag it would be closed; an operator's approval attributes it.
    relaxed = ParityPolicy(3, require_attribution=False, dry_run=False)
    assert one(run([legacy], flat(), streaks={("p1", "t1", 1): Streak(5, "c0", "c0")},
                   policy=relaxed))["decision"] == "synthetic_exit"
    assert one(run([legacy], flat(), streaks={("p1", "t1", 1): Streak(5, "c0", "c0")},
                   approved={("p1", "t1", 1): frozenset({"c0"})}))["decision"] == "synthetic_exit"


def test_an_approval_is_for_the_ghost_episode_it_was_given_for():
    """The operator approved the synthetic exit of the episode that started in c0; the slice
    was supported since (its streak ended) and is a ghost again from c7: a new episode, which
    the old approval does not attribute."""
    legacy = trade_slice("p1", "t1", 0.5, order_client_ids=["legacy42"])
    approved = {("p1", "t1", 1): frozenset({"c0"})}
    row = one(run([legacy], flat(), streaks={("p1", "t1", 1): Streak(5, "c7", "c9")},
                  previous="c9", cycle="c10", approved=approved))
    assert (row["decision"], row["attributable"]) == ("quarantine", False)
    row = one(run([legacy], flat(), streaks={("p1", "t1", 1): Streak(5, "c0", "c9")},
                  previous="c9", cycle="c10", approved=approved))
    assert (row["decision"], row["attributable"]) == ("synthetic_exit", True)


def test_a_quarantine_is_released_only_after_n_consecutive_supported_cycles():
    key = ("p1", "t1", 1)
    assert one(run([trade_slice("p1", "t1", 0.5)], flat(),
                   quarantined=frozenset({key})))["decision"] == "quarantine"
    clears = {}
    decisions = []
    for i in range(1, 5):
        row = one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5)], previous=f"c{i - 1}",
                      cycle=f"c{i}", quarantined=frozenset({key}), clear_streaks=clears))
        decisions.append((row["decision"], row["clear_streak"]))
        clears = {key: Streak(row["clear_streak"], row["clear_started_cycle"], f"c{i}")}
    assert decisions[:3] == [("quarantine", 1), ("quarantine", 2), ("cleared", 3)]
    # A cycle that could not check (c4 failed) starts the run of supported cycles again.
    row = one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5)], previous="c4",
                  cycle="c5", quarantined=frozenset({key}),
                  clear_streaks={key: Streak(2, "c1", "c2")}))
    assert (row["decision"], row["clear_streak"]) == ("quarantine", 1)


def test_dry_run_watchdog_and_missing_mark_price_block_the_close():
    streaks = {("p1", "t1", 1): Streak(2, "c-1", "c0")}
    s = [trade_slice("p1", "t1", 0.5)]
    dry = ParityPolicy(3, True, dry_run=True)
    assert one(run(s, flat(), streaks=streaks, policy=dry))["decision"] == "blocked"
    tripped = one(run(s, flat(), streaks=streaks, watchdog_tripped={"p1": "1 % of capital"}))
    assert tripped["decision"] == "blocked" and "watchdog" in tripped["reason"]
    assert one(run(s, flat(mark=None), streaks=streaks))["decision"] == "blocked"
    assert one(run(s, flat(), streaks=streaks,
                   backfill_go=frozenset({("p1", "t1", 1)})))["decision"] == "backfill"


def test_no_slice_is_singled_out_by_its_size():
    """p1's 0.3 and p2's 0.5 on one one-way symbol, the exchange holds 0.5: that p1's slice is
    the one gone is only a guess (its size matches the gap), so both are ambiguous, neither a
    ghost; with two slices of the same size likewise."""
    slices = [trade_slice("p1", "t1", 0.3), trade_slice("p2", "t2", 0.5)]
    checks = run(slices, [ex_position(0.5)])
    assert set(checks["decision"]) == {"ambiguous"} and not checks["ghost"].any()
    assert one(checks, "t1")["reason"] == (
        f"not singled out: the exchange holds 0.5 on {BTC} against 0.8 claimed and 0.3 of the "
        "difference is explained by no real fill; no slice is singled out by its size; "
        "reported, never closed automatically")
    same = run([trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.5)], [ex_position(0.5)])
    assert set(same["decision"]) == {"ambiguous"} and not same["ghost"].any()


def test_a_book_that_nets_is_supported_whatever_the_net():
    """P long 0.5 and Q short 0.5 on a one-way account: the exchange nets them to flat."""
    book = [trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.5, side="short")]
    checks = run(book, flat())
    assert set(checks["decision"]) == {"cleared"} and not checks["ghost"].any()
    # Long 0.8 and short 0.3: the exchange holds the net 0.5.
    netted = run([trade_slice("p1", "t1", 0.8), trade_slice("p2", "t2", 0.3, side="short")],
                 [ex_position(0.5)])
    assert set(netted["decision"]) == {"cleared"}


def test_a_flat_exchange_makes_every_slice_of_the_leg_a_ghost_and_several_profiles_systemic():
    one_profile = run([trade_slice("p1", "t1", 0.3), trade_slice("p1", "t2", 0.5)], flat())
    assert one_profile["ghost"].all() and set(one_profile["decision"]) == {"confirming"}
    assert one_profile.attrs["systemic"] is None
    both = run([trade_slice("p1", "t1", 0.3), trade_slice("p2", "t2", 0.5)], flat())
    assert both["ghost"].all() and set(both["decision"]) == {"held"}
    assert set(both["streak"]) == {0}
    assert "systemic" in both.attrs["systemic"] and "p1, p2" in both.attrs["systemic"]
    assert all(r.startswith("systemic") for r in both["hold_reason"])
    # A ghost seen the cycle before (confirming) is no part of a flat answer "at once": p1's
    # t1 goes on confirming, p2's new ghost alone is no systemic event.
    known = run([trade_slice("p1", "t1", 0.3), trade_slice("p2", "t2", 0.5)], flat(),
                streaks={("p1", "t1", 1): Streak(1, "c0", "c0")})
    assert known.attrs["systemic"] is None
    assert (one(known, "t1")["streak"], one(known, "t2")["streak"]) == (2, 1)


def test_hedge_legs_are_judged_apart():
    long_leg = ex_position(0.5, side="long") | {"position_side": "long"}
    short_flat = ex_position(0.0, side="flat") | {"position_side": "short"}
    checks = run([trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.5, side="short")],
                 [long_leg, short_flat])
    assert one(checks, "t1")["decision"] == "cleared"
    assert (one(checks, "t2")["ghost"], one(checks, "t2")["decision"]) == (True, "confirming")


def test_real_evidence_holds_a_ghost_and_explains_a_gap():
    from recon_assets.core.evidence import Evidence
    streaks = {("p1", "t1", 1): Streak(5, "c-3", "c0")}
    evidence = Evidence(holds={("p1", "t1", 1): [("open_exit_order", "its EXIT order X is open")]})
    row = one(run([trade_slice("p1", "t1", 0.5)], flat(), streaks=streaks, evidence=evidence))
    assert (row["decision"], row["streak"], row["ghost"]) == ("held", 0, True)
    assert "EXIT order X" in row["reason"] and row["hold_reason"]
    # T1 0.01 and T2 0.02 of p1; T2's exit filled 0.01 behind the database (not booked): the
    # exchange holds 0.02; the gap is that fill, so T1 is supported and T2 waits for it.
    waiting = Evidence(holds={("p1", "t2", 1): [("unbooked_fill", "fill F of its order")]},
                       explained={(BTC, "both"): 0.01})
    checks = run([trade_slice("p1", "t1", 0.01), trade_slice("p1", "t2", 0.02)],
                 [ex_position(0.02)], evidence=waiting)
    assert (one(checks, "t1")["decision"], one(checks, "t2")["decision"]) == ("cleared", "held")


def test_a_retried_cycle_counts_its_sighting_once():
    row = one(run([trade_slice("p1", "t1", 0.5)], flat(),
                  streaks={("p1", "t1", 1): Streak(2, "c0", "c1")}, previous="c1", cycle="c1"))
    assert (row["streak"], row["streak_started_cycle"]) == (2, "c0")


def test_a_slice_changed_a_moment_ago_is_held():
    recent = trade_slice("p1", "t1", 0.5, updated_at=READ_AT - pd.Timedelta(seconds=1))
    row = one(run([recent], flat(), streaks={("p1", "t1", 1): Streak(2, "c-1", "c0")}))
    assert (row["decision"], row["streak"]) == ("held", 0)


def test_closed_slices_and_slices_without_open_qty_are_not_checked():
    checks = run([trade_slice("p1", "t1", 0.5, status="closed"),
                  trade_slice("p1", "t2", 0.5, exit_qty=0.5)], flat())
    assert checks.empty


# --- properties ----------------------------------------------------------------------------------

# Weighted towards runs of sightings (and towards the flags that let a ghost close), so the
# positive case, a synthetic exit, is common; the shares reached are asserted.
history = st.lists(st.sampled_from(["flat"] * 6 + ["held", "failed", "supported"]), max_size=12)
mostly = st.sampled_from([False, False, False, True])


def test_a_synthetic_exit_only_after_n_consecutive_checked_sightings():
    """Over any history of cycles (the exchange flat, the slice changed a moment ago, a failed
    cycle, the exchange holding it), a synthetic exit is decided exactly when the last N
    cycles all saw the ghost, it is attributed, and neither dry run nor the watchdog blocks."""
    seen = Counter()

    @settings(max_examples=300, deadline=None)
    @given(steps=history, n=st.integers(1, 4), unattributed=mostly, dry=mostly, tripped=mostly)
    def check(steps, n, unattributed, dry, tripped):
        attributed = not unattributed
        policy = ParityPolicy(n, require_attribution=True, dry_run=dry)
        ids = None if attributed else ["legacy1"]
        streaks, consecutive, previous, reached = {}, 0, "c0", set()
        for i, step in enumerate(steps, start=1):
            cycle = f"c{i}"
            if step == "failed":  # the cycle ran no heartbeat; the next one's previous is this
                consecutive, previous = 0, cycle
                continue
            updated = READ_AT - pd.Timedelta(seconds=1) if step == "held" else OLD
            checks = run([trade_slice("p1", "t1", 0.5, updated_at=updated, order_client_ids=ids)],
                         flat() if step in ("flat", "held") else [ex_position(0.5)],
                         streaks=streaks, previous=previous, cycle=cycle, policy=policy,
                         watchdog_tripped={"p1": "tripped"} if tripped else None)
            row = one(checks)
            consecutive = consecutive + 1 if step == "flat" else 0
            assert row["streak"] == consecutive
            closes = consecutive >= n and attributed and not dry and not tripped
            assert (row["decision"] == "synthetic_exit") == closes
            if closes:
                reached.add("closed")
            if row["decision"] == "synthetic_exit":
                assert row["idempotency_key"] and row["mark_price"]
            if not attributed and consecutive >= n:
                assert row["decision"] == "quarantine"
                reached.add("quarantined")
            if consecutive == n - 1 and attributed and not (dry or tripped):
                reached.add("one short")
            streaks = ({("p1", "t1", 1): Streak(row["streak"], row["streak_started_cycle"],
                                                cycle)} if row["ghost"] else {})
            previous = cycle
        seen.update(reached | {"examples"})

    check()
    n = seen["examples"]
    assert seen["closed"] >= 0.2 * n and seen["one short"] >= 0.15 * n, seen
    assert seen["quarantined"] >= 0.05 * n, seen


BOOKS = st.lists(st.tuples(st.integers(1, 20), st.sampled_from(("long", "short")),
                          st.integers(1, 3)), min_size=1, max_size=4)


@st.composite
def books_and_exchange(draw):
    """A book of up to four slices of up to three profiles on one one-way symbol, and the
    exchange's signed net in integer steps: as often flat, equal to the book's sum, or anything."""
    book = draw(BOOKS)
    claimed = sum(q if side == "long" else -q for q, side, _ in book)
    exchange = draw(st.one_of(st.just(0), st.just(claimed), st.integers(-40, 40)))
    return book, exchange


def test_a_ghost_is_only_ever_a_slice_of_a_leg_the_exchange_holds_nothing_on():
    """Random books against a random exchange position, judged against arithmetic on whole
    steps (the oracle): when the slices add up to it nothing is a ghost; when the exchange is
    flat and they do not, every slice on the side their sum points to is one (the others
    ambiguous), held when two or more profiles have one; otherwise nothing is singled out."""
    seen = Counter()

    @settings(max_examples=200, deadline=None)
    @given(books_and_exchange())
    def check(case):
        book, exchange = case
        step = 0.001
        slices = [trade_slice(f"p{owner}", f"t{i}", q * step, side=side)
                  for i, (q, side, owner) in enumerate(book)]
        claimed = sum(q if side == "long" else -q for q, side, _ in book)
        position = [ex_position(abs(exchange) * step, side="long" if exchange > 0 else "short")] \
            if exchange else flat()
        checks = run(slices, position)
        if claimed == exchange:
            seen["nets"] += 1
            assert not checks["ghost"].any() and set(checks["decision"]) == {"cleared"}
        elif exchange == 0:
            side = "long" if claimed > 0 else "short"
            ghosts = checks[checks["side"] == side]
            # The oracle: exactly the slices on the side the sum points to.
            expected = {f"t{i}" for i, (_, s, _) in enumerate(book) if s == side}
            assert set(checks[checks["ghost"]]["trade_id"]) == expected
            assert set(checks[checks["side"] != side]["decision"]) <= {"ambiguous"}
            ghost_profiles = {f"p{owner}" for _, s, owner in book if s == side}
            several = len(ghost_profiles) >= 2
            seen["several ghosts" if len(expected) >= 2 else "one ghost"] += 1
            seen["systemic"] += several
            assert set(ghosts["decision"]) == ({"held"} if several else {"confirming"})
        else:
            seen["unexplained gap"] += 1
            assert not checks["ghost"].any() and set(checks["decision"]) == {"ambiguous"}

    check()
    assert min(seen[k] for k in ("nets", "one ghost", "several ghosts", "systemic",
                                 "unexplained gap")) >= 10, seen


# The order of slice_decision's rules for a ghost, first wins: (the condition, its decision, a
# fragment of its reason). Any two rules swapped makes one of the pairs below decide the other's.
_GHOST_RULES = [
    ({"unchecked": True}, HELD, "not checked this cycle"),
    ({"recent": True}, HELD, "changed a moment before"),
    ({"ambiguous": True, "why": "two slices fit"}, AMBIGUOUS, "not singled out"),
    ({"backfill_go": True}, BACKFILL, "real exit fills"),
    ({"hold": "its EXIT order is open"}, HELD, "no synthetic exit while"),
    ({"quarantined": True}, QUARANTINE, "until an operator releases it"),
    ({"streak": 1}, CONFIRMING, "ghost seen 1 of 3"),
    ({"attributed": False}, QUARANTINE, "not attributable"),
    ({"tripped": "drift 900 USD"}, BLOCKED, "watchdog tripped"),
    ({"policy": ParityPolicy(3, True, dry_run=True)}, BLOCKED, "dry run"),
    ({"mark": None}, BLOCKED, "no mark price"),
]


@pytest.mark.parametrize("first,second", [(i, j) for i in range(len(_GHOST_RULES))
                                          for j in range(i + 1, len(_GHOST_RULES))])
def test_the_ghost_rules_apply_in_their_documented_order(first, second):
    base = dict(ghost=True, streak=3, attributed=True, mark=100.0, policy=N3)
    assert slice_decision(("p1", "t1", 1), "p1", **base)[0] == SYNTHETIC_EXIT
    for rule in (first, second):  # each condition alone decides by its own rule
        cond, decision, reason = _GHOST_RULES[rule]
        got = slice_decision(("p1", "t1", 1), "p1", **{**base, **cond})
        assert got[0] == decision and reason in got[1], (cond, got)
    both = {**base, **_GHOST_RULES[second][0], **_GHOST_RULES[first][0]}
    got = slice_decision(("p1", "t1", 1), "p1", **both)
    _, decision, reason = _GHOST_RULES[first]
    assert got[0] == decision and reason in got[1], (
        f"{_GHOST_RULES[first][0]} must win over {_GHOST_RULES[second][0]}: got {got}")


# --------------------------------------------------------------------------- exact rows
# Issue 44: the survivors of mutmut's run over core/parity.py were columns no test compared
# whole (keys, reasons, price sources, the recency guard's edges, the systemic text).

def test_the_synthetic_exit_key_never_changes_between_releases():
    """A re-run after an upgrade must find the exit it applied before: the key is pinned."""
    assert synthetic_exit_key("p1", "t1", 1, "c-1") == (
        "synthetic_exit:p1:t1:1:996fea7f05f7f1a41683785240c5cca4")
    assert synthetic_exit_key("p2", "t9", 3, "c7") == (
        "synthetic_exit:p2:t9:3:f444da638418cafdd1dfcd1c9b5fd3c6")


def test_a_confirmed_ghost_s_check_row_is_exact_in_every_column():
    streaks = {("p1", "t1", 1): Streak(2, "c-1", "c0")}
    row = one(run([trade_slice("p1", "t1", 0.5)], flat(mark=200.0), streaks=streaks))
    assert row == {
        "cycle_id": "c1", "exchange_account": "A", "profile_id": "p1", "trade_id": "t1",
        "slice_no": 1, "symbol": BTC, "side": "long", "virtual_open_qty": 0.5,
        "exchange_qty": 0.0, "slices_qty": 0.5, "min_qty_step": 0.001, "mark_price": 200.0,
        "price_source": "mark_price", "mismatch_notional_usd": 100.0, "attributable": True,
        "attribution": row["attribution"], "ghost": True,
        "ghost_reason": f"the exchange is flat on {BTC} while its open slices claim 0.5",
        "streak": 3, "confirmations_required": 3, "streak_started_cycle": "c-1",
        "decision": SYNTHETIC_EXIT, "reason": "confirmed 3 of 3 consecutive cycles and attributed",
        "idempotency_key": "synthetic_exit:p1:t1:1:996fea7f05f7f1a41683785240c5cca4",
        "hold_reason": None, "clear_streak": 0, "clear_started_cycle": None}
    assert "P1" in row["attribution"]


def test_without_a_mark_the_entry_price_values_the_ghost_and_without_either_nothing_does():
    no_mark = one(run([trade_slice("p1", "t1", 0.5, entry_price=80.0)], flat(mark=None)))
    assert (no_mark["mark_price"], no_mark["price_source"], no_mark["mismatch_notional_usd"]) == (
        None, "entry_price", 40.0)
    neither = one(run([trade_slice("p1", "t1", 0.5, entry_price=None)], flat(mark=None)))
    assert (neither["price_source"], neither["mismatch_notional_usd"]) == (None, 0.0)


def test_a_hedge_leg_is_named_in_the_reason_and_a_one_way_symbol_alone():
    short_flat = ex_position(0.0, side="flat") | {"position_side": "short"}
    long_flat = ex_position(0.0, side="flat") | {"position_side": "long"}
    hedged = one(run([trade_slice("p1", "t1", 0.5, side="short")], [long_flat, short_flat]))
    assert hedged["ghost_reason"] == (f"the exchange is flat on {BTC} (short leg) while its open "
                                      "slices claim -0.5")
    plain = one(run([trade_slice("p1", "t1", 0.5)], flat()))
    assert plain["ghost_reason"] == f"the exchange is flat on {BTC} while its open slices claim 0.5"


def test_a_symbol_the_snapshot_has_no_row_for_is_not_checked():
    """No position row for the slice's symbol (the snapshot did not cover it): never a ghost,
    held, its streak starts again; another symbol's row does not stand in for it."""
    eth = ex_position(0.0, side="flat", symbol="ETH/USDT:USDT")
    row = one(run([trade_slice("p1", "t1", 0.5)], [eth],
                  streaks={("p1", "t1", 1): Streak(2, "c-1", "c0")}))
    assert (row["ghost"], row["decision"], row["streak"], row["exchange_qty"],
            row["mark_price"], row["price_source"]) == (False, HELD, 0, None, None, "entry_price")
    assert row["reason"] == "the exchange snapshot has no row for the symbol: not checked this cycle"


def test_the_quantity_step_is_the_tolerance_of_a_book_that_nets():
    """0.5 claimed, 0.5004 held: within the market's step (0.001) the book nets; a step the
    snapshot does not give falls back to the absolute tolerance, and the gap is ambiguous."""
    assert one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5004)]))["decision"] == "cleared"
    unknown_step = one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5004, step=None)]))
    assert unknown_step["decision"] == AMBIGUOUS


def test_rows_are_ordered_by_symbol_then_slice_whatever_the_input_order():
    eth = "ETH/USDT:USDT"
    slices = [trade_slice("p2", "t9", 0.5, symbol=eth), trade_slice("p2", "t3", 0.5),
              trade_slice("p1", "t5", 0.5, symbol=eth), trade_slice("p1", "t4", 0.5)]
    checks = run(slices, [ex_position(1.0), ex_position(1.0, symbol=eth)])
    assert list(zip(checks["symbol"], checks["profile_id"], checks["trade_id"])) == [
        (BTC, "p1", "t4"), (BTC, "p2", "t3"), (eth, "p1", "t5"), (eth, "p2", "t9")]


def test_the_recency_guard_s_edges():
    """Changed after the read less the guard: held. Exactly at that moment, or with no known
    update time: checked. With no read time there is no guard at all; without a guard given,
    it is 0 s (a slice updated before the read is checked)."""
    guard = pd.Timedelta(seconds=5)
    at_edge = one(run([trade_slice("p1", "t1", 0.5, updated_at=READ_AT - guard)], flat()))
    inside = one(run([trade_slice("p1", "t1", 0.5,
                                  updated_at=READ_AT - guard + pd.Timedelta(milliseconds=1))],
                     flat()))
    unknown = one(run([trade_slice("p1", "t1", 0.5, updated_at=None)], flat()))
    assert (at_edge["decision"], inside["decision"], unknown["decision"]) == (
        CONFIRMING, HELD, CONFIRMING)
    naive = one(run([trade_slice("p1", "t1", 0.5, updated_at=(READ_AT - pd.Timedelta(
        seconds=1)).tz_localize(None))], flat()))  # a time without zone is UTC
    assert naive["decision"] == HELD

    def bare(**kw):
        return one(parity_checks(
            cycle_id="c1", account="A", previous_cycle_id="c0",
            slices=pd.DataFrame([trade_slice("p1", "t1", 0.5,
                                             updated_at=READ_AT - pd.Timedelta(seconds=0.5))],
                                columns=list(F.DB_TRADE_SLICES)),
            profiles=pd.DataFrame([profile("p1")], columns=list(F.DB_PROFILES)),
            exchange_positions=pd.DataFrame(flat(), columns=list(F.EXCHANGE_POSITIONS)),
            streaks={}, policy=N3, **kw))

    assert bare(db_read_at=None, recency_guard_s=5.0)["decision"] == CONFIRMING
    assert bare(db_read_at=READ_AT)["decision"] == CONFIRMING


def test_the_systemic_reason_is_exact_and_held_evidence_is_no_part_of_it():
    both = run([trade_slice("p1", "t1", 0.3), trade_slice("p2", "t2", 0.5)], flat())
    assert both.attrs["systemic"] == (
        "systemic: the exchange reports flat for open slices of 2 profiles (p1, p2) of A at "
        "once and no real fill explains them: every profile of the account is paused, nothing "
        "is closed until the exchange and the slices agree again")
    assert one(both, "t1")["hold_reason"] == both.attrs["systemic"]
    from recon_assets.core.evidence import Evidence
    # p2's ghost waits for real evidence: one unexplained profile is no systemic answer.
    waiting = Evidence(holds={("p2", "t2", 1): [("open_exit_order", "its EXIT order X is open")]})
    held = run([trade_slice("p1", "t1", 0.3), trade_slice("p2", "t2", 0.5)], flat(),
               evidence=waiting)
    assert held.attrs["systemic"] is None
    assert (one(held, "t1")["decision"], one(held, "t2")["decision"]) == (CONFIRMING, HELD)
    # Three profiles, one of them held: systemic, and the held one's reason keeps both.
    three = run([trade_slice("p1", "t1", 0.3), trade_slice("p2", "t2", 0.5),
                 trade_slice("p3", "t3", 0.2)], flat(), evidence=waiting,
                profiles=[profile("p1"), profile("p2"), profile("p3")])
    assert "(p1, p3)" in three.attrs["systemic"]
    assert one(three, "t2")["hold_reason"] == (three.attrs["systemic"]
                                               + "; its EXIT order X is open")


def test_evidence_for_a_supported_slice_holds_nothing():
    """A hold reason is for a ghost (or a gap the evidence explains); a slice the exchange
    supports is cleared, with no hold reason, whatever evidence lists it."""
    from recon_assets.core.evidence import Evidence
    waiting = Evidence(holds={("p1", "t1", 1): [("recent_fill", "a fill newer than the read")]})
    row = one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5)], evidence=waiting))
    assert (row["decision"], row["hold_reason"]) == ("cleared", None)


def test_a_cleared_slice_s_row_is_exact_in_every_column():
    row = one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5)]))
    assert row == {
        "cycle_id": "c1", "exchange_account": "A", "profile_id": "p1", "trade_id": "t1",
        "slice_no": 1, "symbol": BTC, "side": "long", "virtual_open_qty": 0.5,
        "exchange_qty": 0.5, "slices_qty": 0.5, "min_qty_step": 0.001, "mark_price": 101.0,
        "price_source": "mark_price", "mismatch_notional_usd": 0.0, "attributable": True,
        "attribution": row["attribution"], "ghost": False, "ghost_reason": None, "streak": 0,
        "confirmations_required": 3, "streak_started_cycle": None, "decision": "cleared",
        "reason": "the exchange supports the slice", "idempotency_key": None,
        "hold_reason": None, "clear_streak": 0, "clear_started_cycle": None}


def test_no_open_slice_gives_an_empty_frame_with_every_column():
    checks = run([trade_slice("p1", "t1", 0.5, status="closed", exit_qty=0.5)], flat())
    assert len(checks) == 0 and list(checks.columns) == list(PARITY_CHECK_COLUMNS)


def test_a_quarantined_slice_s_run_of_supported_cycles_starts_only_when_supported():
    """Its clear streak counts cycles the exchange supported it, checked and not held: a ghost
    (still gone) has none, nor a slice changed a moment ago or held by evidence; the first
    supported cycle starts the run there."""
    from recon_assets.core.evidence import Evidence
    key = ("p1", "t1", 1)
    q = frozenset({key})
    ghost = one(run([trade_slice("p1", "t1", 0.5)], flat(), quarantined=q))
    assert (ghost["decision"], ghost["clear_streak"], ghost["clear_started_cycle"]) == (
        QUARANTINE, 0, None)
    supported = one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5)], quarantined=q))
    assert (supported["decision"], supported["clear_streak"],
            supported["clear_started_cycle"]) == (QUARANTINE, 1, "c1")
    assert supported["reason"] == ("the exchange supports it now (1 of 3 consecutive cycles): "
                                   "the quarantine holds until it has for 3")
    recent = one(run([trade_slice("p1", "t1", 0.5, updated_at=READ_AT)], [ex_position(0.5)],
                     quarantined=q))
    # The exchange holds 0.3 of the 0.5: a fill of its own waiting to be booked explains the
    # rest, and holds it; supported only once that fill is booked.
    held = one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.3)], quarantined=q,
                   evidence=Evidence(holds={key: [("unbooked_fill", "fill F is not booked")]},
                                     explained={(BTC, "both"): 0.2})))
    assert (recent["clear_streak"], held["clear_streak"]) == (0, 0)
    released = one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5)], quarantined=q,
                       clear_streaks={key: Streak(2, "c-1", "c0")}))
    assert (released["decision"], released["reason"]) == (
        "cleared", "the exchange supported it 3 of 3 consecutive cycles: the quarantine is "
                   "released")


def test_an_approval_s_attribution_says_so():
    legacy = trade_slice("p1", "t1", 0.5, order_client_ids=["legacy42"])
    row = one(run([legacy], flat(), streaks={("p1", "t1", 1): Streak(5, "c0", "c0")},
                  approved={("p1", "t1", 1): frozenset({"c0"})}))
    assert row["attribution"] == ("an operator approved its synthetic exit for this ghost "
                                  "episode (since c0)")


@pytest.mark.parametrize("kwargs,expected", [
    (dict(unchecked=True), (HELD, "the exchange snapshot has no row for the symbol: not checked "
                                  "this cycle")),
    (dict(recent=True), (HELD, "changed a moment before the database was read: checked next "
                               "cycle")),
    (dict(ambiguous=True, why="the gap"), (AMBIGUOUS, "not singled out: the gap; reported, never "
                                                      "closed automatically")),
    (dict(ghost=False, backfill_go=True), (BACKFILL, "the EXIT backfill has the real exit fills "
                                                     "for it: evidence first")),
    (dict(ghost=False, hold="X waits"), (HELD, "waiting for its real evidence: X waits")),
    (dict(ghost=False), ("cleared", "the exchange supports the slice")),
    (dict(backfill_go=True), (BACKFILL, "the EXIT backfill has the real exit fills for it: "
                                        "evidence first")),
    (dict(hold="X waits"), (HELD, "no synthetic exit while X waits")),
    (dict(quarantined=True), (QUARANTINE, "quarantined: never closed automatically until an "
                                          "operator releases it")),
    (dict(streak=2), (CONFIRMING, "ghost seen 2 of 3 consecutive cycles")),
    (dict(attributed=False), (QUARANTINE, "confirmed 3 of 3, but not attributable to profile p1 "
                                          "by its orders' sub tag")),
    (dict(tripped="drift 900 USD"), (BLOCKED, "confirmed, but the integrity watchdog tripped: "
                                              "drift 900 USD")),
    (dict(policy=ParityPolicy(3, require_attribution=True, dry_run=True)),
     (BLOCKED, "confirmed: dry run records the synthetic exit it would apply")),
    (dict(mark=None), (BLOCKED, "confirmed, but the snapshot has no mark price to close it at")),
    (dict(), (SYNTHETIC_EXIT, "confirmed 3 of 3 consecutive cycles and attributed")),
])
def test_every_decision_s_reason_is_exact(kwargs, expected):
    """The reasons are what operators read and the analyst guide quotes."""
    args = dict(ghost=True, streak=3, attributed=True, mark=100.0, policy=N3)
    assert slice_decision(("p1", "t1", 1), "p1", **{**args, **kwargs}) == expected
