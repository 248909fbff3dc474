"""The parity heartbeat's decisions (core.parity): examples per rule, and hypothesis properties
over random streak histories."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_assets.core import frames as F
from recon_assets.core.parity import ParityPolicy, Streak, parity_checks, synthetic_exit_key
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
    assert "legacy42" in row["attribution"]
    # Without the flag it would be closed; an operator's approval attributes it.
    relaxed = ParityPolicy(3, require_attribution=False, dry_run=False)
    assert one(run([legacy], flat(), streaks={("p1", "t1", 1): Streak(5, "c0", "c0")},
                   policy=relaxed))["decision"] == "synthetic_exit"
    assert one(run([legacy], flat(), streaks={("p1", "t1", 1): Streak(5, "c0", "c0")},
                   approved=frozenset({("p1", "t1", 1)})))["decision"] == "synthetic_exit"


def test_a_quarantined_slice_stays_quarantined_and_a_supported_one_clears():
    key = ("p1", "t1", 1)
    assert one(run([trade_slice("p1", "t1", 0.5)], flat(),
                   quarantined=frozenset({key})))["decision"] == "quarantine"
    assert one(run([trade_slice("p1", "t1", 0.5)], [ex_position(0.5)],
                   quarantined=frozenset({key})))["decision"] == "cleared"


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


def test_two_profiles_on_one_symbol_only_the_slice_the_evidence_singles_out():
    slices = [trade_slice("p1", "t1", 0.3), trade_slice("p2", "t2", 0.5)]
    checks = run(slices, [ex_position(0.5)])  # p1's 0.3 is gone, p2's 0.5 is there
    assert (one(checks, "t1")["ghost"], one(checks, "t1")["decision"]) == (True, "confirming")
    assert (one(checks, "t2")["ghost"], one(checks, "t2")["decision"]) == (False, "cleared")
    # Two slices of the same qty: the exchange's 0.5 could be either: nothing is singled out.
    same = run([trade_slice("p1", "t1", 0.5), trade_slice("p2", "t2", 0.5)], [ex_position(0.5)])
    assert set(same["decision"]) == {"ambiguous"} and not same["ghost"].any()
    # A flat exchange: every slice on the symbol is a ghost.
    both = run(slices, flat())
    assert both["ghost"].all() and set(both["decision"]) == {"confirming"}


def test_a_slice_changed_a_moment_ago_is_held():
    recent = trade_slice("p1", "t1", 0.5, updated_at=READ_AT - pd.Timedelta(seconds=1))
    row = one(run([recent], flat(), streaks={("p1", "t1", 1): Streak(2, "c-1", "c0")}))
    assert (row["decision"], row["streak"]) == ("held", 0)


def test_closed_slices_and_slices_without_open_qty_are_not_checked():
    checks = run([trade_slice("p1", "t1", 0.5, status="closed"),
                  trade_slice("p1", "t2", 0.5, exit_qty=0.5)], flat())
    assert checks.empty


# --- properties ----------------------------------------------------------------------------------

history = st.lists(st.sampled_from(["flat", "held", "failed", "supported"]), max_size=12)


@settings(max_examples=examples(300), deadline=None)
@given(steps=history, n=st.integers(1, 4), attributed=st.booleans(), dry=st.booleans(),
       tripped=st.booleans())
def test_a_synthetic_exit_only_after_n_consecutive_checked_sightings(steps, n, attributed, dry,
                                                                      tripped):
    """Over any history of cycles (the exchange flat, the slice changed a moment ago, a failed
    cycle, the exchange holding it), a synthetic exit is decided exactly when the last N
    cycles all saw the ghost, it is attributed, and neither dry run nor the watchdog blocks."""
    policy = ParityPolicy(n, require_attribution=True, dry_run=dry)
    ids = None if attributed else ["legacy1"]
    streaks, consecutive, previous = {}, 0, "c0"
    for i, step in enumerate(steps, start=1):
        cycle = f"c{i}"
        if step == "failed":  # the cycle ran no heartbeat; the next one's previous is this one
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
        if row["decision"] == "synthetic_exit":
            assert row["idempotency_key"] and row["mark_price"]
        if not attributed and consecutive >= n:
            assert row["decision"] == "quarantine"
        streaks = ({("p1", "t1", 1): Streak(row["streak"], row["streak_started_cycle"], cycle)}
                   if row["ghost"] else {})
        previous = cycle


@settings(max_examples=examples(200), deadline=None)
@given(qtys=st.lists(st.integers(1, 20), min_size=1, max_size=4), gone=st.integers(0, 3),
       exchange_extra=st.integers(-3, 3))
def test_a_ghost_on_a_shared_symbol_is_only_ever_one_the_evidence_singles_out(qtys, gone,
                                                                              exchange_extra):
    step = 0.001
    slices = [trade_slice(f"p{i % 2 + 1}", f"t{i}", q * step) for i, q in enumerate(qtys)]
    held = sum(qtys) - (qtys[gone] if gone < len(qtys) else 0) + exchange_extra
    position = [ex_position(abs(held) * step, side="long" if held >= 0 else "short")] if held \
        else flat()
    checks = run(slices, position)
    ghosts = checks[checks["ghost"]]
    if held == 0:
        assert len(ghosts) == len(slices)
    elif len(ghosts):
        # Exactly one, and removing it explains the exchange's position.
        assert len(ghosts) == 1
        assert abs(sum(qtys) - round(ghosts.iloc[0]["virtual_open_qty"] / step) - held) == 0
        assert sum(qtys[i] == round(ghosts.iloc[0]["virtual_open_qty"] / step)
                   for i in range(len(qtys))) >= 1
    assert set(checks["decision"]) <= {"cleared", "confirming", "ambiguous"}
