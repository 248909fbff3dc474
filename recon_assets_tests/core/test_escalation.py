"""The escalation rules (the runbook's "When to escalate") as plain functions: examples, and
hypothesis properties over random multi-account cycle histories."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_assets.core.escalation import (MISMATCH_IDENTITY, failed_cycles, lock_contention,
                                          persistent_mismatches, slack_payload, unknown_fills)
from recon_assets_tests.harness.examples import examples

pytestmark = pytest.mark.unit

GHOST = {"kind": "ghost_slice", "profile_id": "alpha", "exchange_account": "acct1",
         "symbol": "BTC/USDT:USDT", "client_order_id": None, "exchange_order_id": None,
         "trade_id": "t1", "notional_usd": 120.0}


def _cycles(*ids):
    return pd.DataFrame({"cycle_id": list(ids), "exchange_account": "acct1",
                         "finished_at": pd.date_range("2026-01-01", periods=len(ids), freq="min", tz="UTC")})


def test_mismatch_in_both_of_the_last_two_runs_escalates():
    mismatches = pd.DataFrame([{**GHOST, "cycle_id": "c1"}, {**GHOST, "cycle_id": "c2"}])
    (alert,) = persistent_mismatches(mismatches, _cycles("c1", "c2"))
    assert alert.reason == "persistent_mismatch" and alert.exchange_account == "acct1"
    assert alert.dedup_key.startswith("persistent_mismatch:acct1:")
    # The same persisting set in a later cycle is the same episode: no second alert.
    later = pd.DataFrame([{**GHOST, "cycle_id": "c2"}, {**GHOST, "cycle_id": "c3"}])
    assert persistent_mismatches(later, _cycles("c2", "c3"))[0].dedup_key == alert.dedup_key
    # Another ghost of the same profile joining is the same situation (profiles and kinds) ...
    grown = pd.concat([later, pd.DataFrame([{**GHOST, "trade_id": "t9", "cycle_id": c} for c in ("c2", "c3")])])
    assert persistent_mismatches(grown, _cycles("c2", "c3"))[0].dedup_key == alert.dedup_key
    # ... another profile joining is a new escalation, naming both.
    other = pd.concat([later, pd.DataFrame([{**GHOST, "profile_id": "beta", "trade_id": "t9",
                                             "cycle_id": c} for c in ("c2", "c3")])])
    (wider,) = persistent_mismatches(other, _cycles("c2", "c3"))
    assert wider.dedup_key != alert.dedup_key and "profiles alpha, beta" in wider.summary
    # ... and so is the same set again after a clean cycle (a new episode).
    assert persistent_mismatches(later, _cycles("c2", "c3"), last_clean={"acct1": "c0"}
                                 )[0].dedup_key != alert.dedup_key
    assert alert.details["by_kind"] == {"ghost_slice": 1} and alert.details["profiles"] == ["alpha"]
    assert "acct1" in alert.summary and "ghost_slice: 1" in alert.summary


def test_mismatch_resolved_by_the_second_run_does_not_escalate():
    mismatches = pd.DataFrame([{**GHOST, "cycle_id": "c1"}, {**GHOST, "trade_id": "t2", "cycle_id": "c2"}])
    assert persistent_mismatches(mismatches, _cycles("c1", "c2")) == []


def test_a_single_run_is_not_enough_to_escalate():
    assert persistent_mismatches(pd.DataFrame([{**GHOST, "cycle_id": "c1"}]), _cycles("c1")) == []


def test_unknown_fills_are_those_no_order_explains():
    fills = pd.DataFrame({"exchange_fill_id": ["1", "2", "3"], "exchange_order_id": ["o1", "o2", "o3"],
                          "client_order_id": ["rc.ALP.t1.E1", None, None], "symbol": "BTC/USDT:USDT",
                          "notional_usd": [10.0, 20.0, 30.0]})
    (alert,) = unknown_fills(fills, {"rc.ALP.t1.E1", "o2"}, "acct1")
    assert alert.details["exchange_fill_ids"] == ["3"] and alert.details["notional_usd"] == 30.0
    assert unknown_fills(fills, {"o1", "o2", "o3"}, "acct1") == []


def test_lock_contention_alert_names_the_profile():
    events = pd.DataFrame({"id": [7], "profile_id": ["alpha"], "cycle_id": ["c9"], "waited_ms": [5000]})
    (alert,) = lock_contention(events)
    assert alert.profile_id == "alpha" and "5000 ms" in alert.summary


def test_slack_payload_has_text_and_blocks():
    (alert,) = lock_contention(pd.DataFrame({"id": [1], "profile_id": ["a"], "cycle_id": ["c"], "waited_ms": [1]}))
    payload = slack_payload(alert)
    assert payload["text"].startswith(":rotating_light: Reconciliation lock contention")
    assert payload["blocks"][0]["type"] == "header"
    assert payload["recon_alert"]["dedup_key"] == "lock_contention:1"


def test_a_drifting_account_next_to_a_clean_one_escalates_the_drifting_one():
    """Issue 10, sequence 8: one account with findings, another with clean succeeded cycles."""
    mismatches = pd.DataFrame([{**GHOST, "cycle_id": "c1"}, {**GHOST, "cycle_id": "c2"}])
    cycles = pd.concat([_cycles("c1", "c2"),
                        _cycles("d1", "d2").assign(exchange_account="acct2")], ignore_index=True)
    (alert,) = persistent_mismatches(mismatches, cycles)
    assert alert.exchange_account == "acct1"


# --- properties over random multi-account histories --------------------------------------------

ACCOUNTS = ("acct1", "acct2", "acct3")
finding = st.fixed_dictionaries({
    "kind": st.sampled_from(["ghost_slice", "missing_in_db", "qty_drift"]),
    "profile_id": st.sampled_from(["alpha", "beta", None]),
    "symbol": st.sampled_from(["BTC/USDT:USDT", "ETH/USDT:USDT"]),
    "client_order_id": st.sampled_from([None, "rc.ALP.t1.E1", "rc.BET.t2.X1"]),
    "exchange_order_id": st.sampled_from([None, "11", "12"]),
    "trade_id": st.sampled_from([None, "t1", "t2"]),
    "notional_usd": st.floats(0, 1e6, allow_nan=False),
})
# Per account: 0-4 succeeded cycles, each with a set of findings.
history = st.dictionaries(st.sampled_from(ACCOUNTS),
                          st.lists(st.lists(finding, max_size=4), max_size=4), max_size=3)


def _frames(hist):
    cycles, rows = [], []
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    for account, account_cycles in hist.items():
        for i, findings in enumerate(account_cycles):
            cycle_id = f"{account}-c{i}"
            cycles.append({"cycle_id": cycle_id, "exchange_account": account,
                           "finished_at": t0 + pd.Timedelta(minutes=i)})
            rows += [{**f, "exchange_account": account, "cycle_id": cycle_id} for f in findings]
    return (pd.DataFrame(rows, columns=["cycle_id", *MISMATCH_IDENTITY, "notional_usd"]),
            pd.DataFrame(cycles, columns=["cycle_id", "exchange_account", "finished_at"]))


def _identity(f):
    return tuple("" if f[k] is None else str(f[k]) for k in MISMATCH_IDENTITY)


@settings(max_examples=examples(300), deadline=None)
@given(hist=history, runs=st.integers(1, 3))
def test_persistent_mismatches_are_exactly_those_in_each_of_the_last_runs(hist, runs):
    mismatches, cycles = _frames(hist)
    alerts = {a.exchange_account: a for a in persistent_mismatches(mismatches, cycles, runs)}
    assert len(alerts) == len(persistent_mismatches(mismatches, cycles, runs))  # one per account
    for account in ACCOUNTS:
        last = hist.get(account, [])[-runs:]
        if len(last) < runs:
            assert account not in alerts
            continue
        persisting = set.intersection(*({_identity({**f, "exchange_account": account})
                                         for f in findings} for findings in last))
        if not persisting:
            assert account not in alerts
            continue
        alert = alerts[account]
        assert sum(alert.details["by_kind"].values()) == len(persisting)
        assert alert.details["cycles"] == [f"{account}-c{i}" for i in
                                           range(len(hist[account]) - runs, len(hist[account]))]


@settings(max_examples=examples(200), deadline=None)
@given(hist=history, runs=st.integers(1, 3))
def test_an_accounts_escalation_does_not_depend_on_the_other_accounts(hist, runs):
    mismatches, cycles = _frames(hist)
    together = {a.exchange_account: a for a in persistent_mismatches(mismatches, cycles, runs)}
    for account in hist:
        alone = persistent_mismatches(mismatches[mismatches["exchange_account"] == account],
                                      cycles[cycles["exchange_account"] == account], runs)
        assert [a.dedup_key for a in alone] == (
            [together[account].dedup_key] if account in together else [])


@settings(max_examples=examples(200), deadline=None)
@given(hist=history)
def test_the_episode_key_changes_exactly_when_the_profiles_kinds_or_episode_change(hist):
    """Issue 14: a persistent-mismatch alert names the account, profiles and kinds; a new one is
    raised only when that set changes or the episode ends and starts again."""
    mismatches, cycles = _frames(hist)
    alerts = {a.exchange_account: a for a in persistent_mismatches(mismatches, cycles)}
    first = {account: a.dedup_key for account, a in alerts.items()}
    # The same findings in shuffled row order give the same keys.
    shuffled = mismatches.sample(frac=1, random_state=1)
    assert {a.exchange_account: a.dedup_key
            for a in persistent_mismatches(shuffled, cycles)} == first
    for account, key in first.items():
        def keys(frame, clean=None):
            return {a.exchange_account: a.dedup_key
                    for a in persistent_mismatches(frame, cycles, last_clean=clean)}

        mine = mismatches["exchange_account"] == account
        # Other orders of the same profiles and kinds: not news. (Renamed one to one: setting
        # every symbol to one value could merge two findings into one that persists.)
        moved = mismatches.copy()
        moved.loc[mine, "symbol"] = "NEW" + moved.loc[mine, "symbol"]
        assert keys(moved)[account] == key
        # A kind or a profile changes: a new alert, for that account only.
        for column, value in (("kind", "price_drift"), ("profile_id", "zeta")):
            changed = mismatches.copy()
            changed.loc[mine, column] = value
            again = keys(changed)
            # (What the alert names is the persisting findings' kinds and profiles.)
            named = (set(alerts[account].details["by_kind"]) if column == "kind"
                     else set(alerts[account].details["profiles"]))
            if named != {value}:
                assert again[account] != key, column
            assert {k: v for k, v in again.items() if k != account} == {
                k: v for k, v in first.items() if k != account}
        # The same set in a new episode (after a clean cycle): a new alert.
        assert keys(mismatches, {account: "clean-cycle"})[account] != key


fill = st.fixed_dictionaries({
    "exchange_order_id": st.sampled_from(["o1", "o2", "o3"]),
    "client_order_id": st.sampled_from([None, "rc.ALP.t1.E1", "rc.X.t9.E1"]),
    "symbol": st.just("BTC/USDT:USDT"),
    "notional_usd": st.floats(0, 1e6, allow_nan=False),
})


@settings(max_examples=examples(200), deadline=None)
@given(fills=st.lists(fill, max_size=8), known=st.sets(st.sampled_from(
    ["o1", "o2", "o3", "rc.ALP.t1.E1", "rc.X.t9.E1"])))
def test_unknown_fills_are_exactly_the_unexplained_ones(fills, known):
    frame = pd.DataFrame([{**f, "exchange_fill_id": str(i)} for i, f in enumerate(fills)],
                         columns=["exchange_fill_id", "exchange_order_id", "client_order_id",
                                  "symbol", "notional_usd"])
    unexplained = sorted(str(i) for i, f in enumerate(fills)
                         if f["exchange_order_id"] not in known and f["client_order_id"] not in known)
    alerts = unknown_fills(frame, known, "acct1")
    if not unexplained:
        assert alerts == []
    else:
        (alert,) = alerts
        assert alert.details["exchange_fill_ids"] == unexplained


@settings(max_examples=examples(100), deadline=None)
@given(ids=st.lists(st.integers(1, 10_000), unique=True, max_size=6))
def test_one_alert_per_contention_event_and_failed_cycle(ids):
    events = pd.DataFrame({"id": ids, "profile_id": "alpha", "cycle_id": [f"c{i}" for i in ids],
                           "waited_ms": 10})
    assert sorted(a.dedup_key for a in lock_contention(events)) == sorted(
        f"lock_contention:{i}" for i in ids)
    failed = pd.DataFrame({"cycle_id": [f"c{i}" for i in ids], "exchange_account": "acct1",
                           "error": "boom"})
    assert len({a.dedup_key for a in failed_cycles(failed)}) == len(ids)


def test_delivery_retries_back_off_and_give_up():
    from datetime import datetime, timezone

    from recon_assets.core.escalation import after_delivery_attempt

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    waits = [(after_delivery_attempt(n, False, now).next_attempt_at - now).total_seconds()
             for n in range(1, 10)]
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert after_delivery_attempt(10, False, now).status == "given_up"
    assert after_delivery_attempt(3, True, now).status == "delivered"


def test_unknown_fill_keys_of_different_sets_never_collide():
    """The old key (last fill id + count) made {1, 3} and {2, 3} one alert."""
    def fills(ids):
        return pd.DataFrame({"exchange_fill_id": ids, "exchange_order_id": [f"o{i}" for i in ids],
                             "client_order_id": [None] * len(ids), "symbol": ["BTC/USDT:USDT"] * len(ids),
                             "notional_usd": [1.0] * len(ids)})

    (a,) = unknown_fills(fills(["1", "3"]), set(), "acct1")
    (b,) = unknown_fills(fills(["2", "3"]), set(), "acct1")
    (again,) = unknown_fills(fills(["3", "1"]), set(), "acct1")
    assert a.dedup_key != b.dedup_key and a.dedup_key == again.dedup_key
