"""The policy replay (core.replay) on recorded histories built by the core rules themselves
(harness/replay_history.py): the live flags reproduce the record; other flags move exits,
pauses and quarantines the way the rules say; hypothesis over seeds and flags."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_assets.core.backfill import BackfillPolicy
from recon_assets.core.replay import (EVENT_AUTO_RESUME, EVENT_BACKFILL_GO, EVENT_QUARANTINE,
                                      EVENT_SYNTHETIC_EXIT, EVENT_WATCHDOG_PAUSE, LIVE, REPLAY,
                                      ReplayPolicy, fold, recorded_decisions, replay)
from recon_assets_tests.harness.examples import examples
from recon_assets_tests.harness.replay_history import (LIVE_PARITY, LIVE_RESUME, START,
                                                       recorded_history)

pytestmark = pytest.mark.unit

LIVE_FLAGS = ReplayPolicy(parity=LIVE_PARITY, max_notional_pct=5.0, resume=LIVE_RESUME,
                          backfill=BackfillPolicy())


def with_flags(**changes) -> ReplayPolicy:
    parity = {k: changes.pop(k) for k in ("confirmations", "require_attribution", "dry_run")
              if k in changes}
    resume = {k: changes.pop(k) for k in ("enabled", "min_pause_ms", "clean_cycles",
                                          "cooldown_ms") if k in changes}
    return replace(LIVE_FLAGS, parity=replace(LIVE_FLAGS.parity, **parity),
                   resume=replace(LIVE_FLAGS.resume, **resume), **changes)


def kinds(result, policy, kind):
    return [e for e in result.events if e["policy"] == policy and e["kind"] == kind]


def test_the_live_flags_reproduce_the_recorded_history_exactly():
    history = recorded_history(400, profiles=3, ghost_rate=0.08)
    result = replay(history, LIVE_FLAGS, LIVE_FLAGS)
    assert result.fidelity_ok, result.first_difference
    recorded = recorded_decisions(history)
    assert result.live.checks == recorded.checks and result.live.gates == recorded.gates
    # The history has every kind of decision in it, so the equality means something.
    decisions = {d for d, _ in recorded.checks.values()}
    assert {"cleared", "confirming", "synthetic_exit", "quarantine"} <= decisions
    assert any(a == "watchdog_pause" for *_, a in recorded.gates)
    assert any(a == "auto_resume" for *_, a in recorded.gates)
    # With no override the two policies report the same events.
    def keys(policy):
        return sorted((e["kind"], e["profile_id"], e["cycle_id"], str(e["trade_id"]),
                       e["notional_usd"], e["duration_s"]) for e in result.events
                      if e["policy"] == policy)

    assert keys(LIVE) == keys(REPLAY) and len(keys(LIVE)) > 10


def test_a_changed_record_is_reported_as_a_replay_defect_with_the_first_differing_cycle():
    history = recorded_history(60, profiles=2, ghost_rate=0.2)
    exits = [r for r in history.checks if r["decision"] == "synthetic_exit"]
    assert exits
    first = min(exits, key=lambda r: r["cycle_id"])
    first["decision"] = "blocked"  # as if the live loop had decided otherwise
    later = max(exits, key=lambda r: r["cycle_id"])
    later["decision"] = "blocked"
    result = replay(history, LIVE_FLAGS, LIVE_FLAGS)
    assert not result.fidelity_ok
    assert result.first_difference["cycle_id"] == first["cycle_id"]
    assert result.first_difference["what"] == "check"
    assert result.first_difference["recorded"].startswith("('blocked'")


def test_one_confirmation_closes_every_ghost_two_cycles_earlier():
    history = recorded_history(200, profiles=2, ghost_rate=0.05, pct=100.0)
    result = replay(history, LIVE_FLAGS, with_flags(confirmations=1, max_notional_pct=100.0))
    assert result.fidelity_ok, result.first_difference
    replayed = kinds(result, REPLAY, EVENT_SYNTHETIC_EXIT)
    assert replayed and len(replayed) >= len(kinds(result, LIVE, EVENT_SYNTHETIC_EXIT))
    paired = [e for e in replayed if e["cycles_from_live"] is not None]
    assert paired
    # Two cycles earlier, unless a failed cycle broke the live streak and restarted it.
    assert all(e["cycles_from_live"] <= -2 for e in paired), paired
    assert any(e["cycles_from_live"] == -2 for e in paired)


def test_more_confirmations_keep_ghosts_the_live_loop_closed_open_as_last_seen():
    history = recorded_history(200, profiles=2, ghost_rate=0.05, pct=100.0)
    result = replay(history, LIVE_FLAGS, with_flags(confirmations=6, max_notional_pct=100.0))
    live = kinds(result, LIVE, EVENT_SYNTHETIC_EXIT)
    later = [e for e in kinds(result, REPLAY, EVENT_SYNTHETIC_EXIT)
             if e["cycles_from_live"] is not None]
    assert live and later and all(e["cycles_from_live"] >= 3 for e in later), later


def test_a_lower_watchdog_percent_pauses_where_the_live_loop_did_not():
    history = recorded_history(300, profiles=3, ghost_rate=0.05, pct=100.0)
    result = replay(history, LIVE_FLAGS, with_flags(max_notional_pct=2.0))
    assert not kinds(result, LIVE, EVENT_WATCHDOG_PAUSE)
    pauses = kinds(result, REPLAY, EVENT_WATCHDOG_PAUSE)
    assert pauses and all(e["notional_usd"] > 200.0 for e in pauses)
    # A tripped profile's confirmed ghost is blocked, not closed; the ghost stays (the replay
    # keeps a slice the live loop closed open), so the profile is never clean again and the
    # pause never ends by itself: the replay shows an operator would have had to step in.
    paused = {e["profile_id"] for e in pauses}
    assert all(e["duration_s"] is None for e in pauses)
    assert not kinds(result, REPLAY, EVENT_AUTO_RESUME)
    blocked = {k[1][0] for k, (decision, _) in result.replay.checks.items()
               if decision == "blocked"}
    assert paused <= blocked
    assert len(kinds(result, REPLAY, EVENT_SYNTHETIC_EXIT)) < len(
        kinds(result, LIVE, EVENT_SYNTHETIC_EXIT))


def test_without_attribution_required_nothing_is_quarantined_and_more_is_closed():
    history = recorded_history(200, profiles=2, ghost_rate=0.08, pct=100.0)
    result = replay(history, LIVE_FLAGS, with_flags(require_attribution=False,
                                                     max_notional_pct=100.0))
    assert kinds(result, LIVE, EVENT_QUARANTINE) and not kinds(result, REPLAY, EVENT_QUARANTINE)
    assert len(kinds(result, REPLAY, EVENT_SYNTHETIC_EXIT)) > len(
        kinds(result, LIVE, EVENT_SYNTHETIC_EXIT))


def test_dry_run_closes_nothing_and_quarantines_nothing():
    history = recorded_history(120, profiles=2, ghost_rate=0.1, pct=100.0)
    result = replay(history, LIVE_FLAGS, with_flags(dry_run=True, max_notional_pct=100.0))
    assert not kinds(result, REPLAY, EVENT_SYNTHETIC_EXIT)
    assert not kinds(result, REPLAY, EVENT_QUARANTINE)


def test_heuristics_turn_a_held_backfill_candidate_into_go():
    history = recorded_history(10, profiles=1, ghost_rate=0.0)
    cycle = next(c for c in history.cycles[4:] if c["status"] == "succeeded")
    history.backfill.append({
        "cycle_id": cycle["cycle_id"], "exchange_account": "acct0", "symbol": "ADAUSDT",
        "exchange_fill_id": "f1", "profile_id": "acct0-p0", "trade_id": "t9", "slice_no": 1,
        "decision": "NO_GO", "match_mode": "single_open_trade", "assignable": True,
        "reason": "the only open slice; held", "dry_run": False, "fill_qty": 2000.0,
        "fill_price": 0.05, "review_verdict": None, "review_id": None, "review_note": None})
    strict = replay(history, LIVE_FLAGS, LIVE_FLAGS)
    assert strict.fidelity_ok and not kinds(strict, REPLAY, EVENT_BACKFILL_GO)
    loose = replay(history, LIVE_FLAGS, replace(LIVE_FLAGS, backfill=BackfillPolicy(
        require_strong_attribution=False, allow_heuristic_match=True)))
    [go] = kinds(loose, REPLAY, EVENT_BACKFILL_GO)
    assert go["heuristic"] and go["notional_usd"] == pytest.approx(100.0)
    assert loose.replay.backfill[(cycle["cycle_id"], "ADAUSDT", "f1")] == "GO"
    # An operator's reject keeps it NO_GO whatever the flags.
    history.backfill[-1].update(review_verdict="reject", review_id=7, review_note="not ours")
    rejected = replay(history, LIVE_FLAGS, replace(LIVE_FLAGS, backfill=BackfillPolicy(
        require_strong_attribution=False, allow_heuristic_match=True)))
    assert not kinds(rejected, REPLAY, EVENT_BACKFILL_GO)


def test_the_range_and_profiles_filter_what_is_reported_not_what_is_decided():
    history = recorded_history(300, profiles=3, ghost_rate=0.08)
    whole = replay(history, LIVE_FLAGS, with_flags(confirmations=1))
    since, until = START.replace(hour=2), START.replace(hour=4)
    part = replay(history, LIVE_FLAGS, with_flags(confirmations=1), since=since, until=until,
                  profiles=["acct0-p1"])
    expected = [e for e in whole.events if since <= e["at"] < until
                and e["profile_id"] == "acct0-p1"]
    assert part.events == expected and expected
    assert {r["profile_id"] for r in part.summary} == {"acct0-p1"}
    assert sum(r[LIVE] + r[REPLAY] for r in part.per_day) == len(part.events)


@settings(max_examples=examples(25), deadline=None)
@given(seed=st.integers(0, 10_000), confirmations=st.integers(1, 5),
       pct=st.sampled_from([1.0, 3.0, 5.0, 100.0]), clean=st.integers(1, 4))
def test_property_the_live_fold_always_reproduces_a_history_the_rules_recorded(
        seed, confirmations, pct, clean):
    parity = replace(LIVE_PARITY, confirmations=confirmations)
    resume = replace(LIVE_RESUME, clean_cycles=clean)
    history = recorded_history(80, profiles=2, seed=seed, ghost_rate=0.1, pct=pct,
                               parity=parity, resume=resume)
    live = ReplayPolicy(parity=parity, max_notional_pct=pct, resume=resume,
                        backfill=BackfillPolicy())
    result = replay(history, live, with_flags(confirmations=1))
    assert result.fidelity_ok, result.first_difference
    # Whatever the flags, a slice is closed at most once, and never while it is quarantined.
    for policy in (LIVE, REPLAY):
        exits = [(e["profile_id"], e["trade_id"]) for e in kinds(result, policy,
                                                                  EVENT_SYNTHETIC_EXIT)]
        assert len(exits) == len(set(exits))
    folded = fold(history, with_flags(confirmations=1))
    assert folded.cycles == result.live.cycles
