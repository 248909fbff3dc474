"""The cycle's evidence rule and the reconciling gate's staleness rule, with times injected."""

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recon_assets.core.cycle import (LIVE_RUN_STATUSES, SnapshotStamp, account_shards,
                                     evidence_problems, orphaned_cycle,
                                     evidence_time, reconciling_gate_verdict)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def stamps(db_run="r1", ex_run="r1", db_age=10.0, ex_age=9.0):
    db = NOW - timedelta(seconds=db_age)
    ex = NOW - timedelta(seconds=ex_age)
    return ([SnapshotStamp(n, "database", db_run, db) for n in ("db_profiles", "db_orders")]
            + [SnapshotStamp(n, "exchange", ex_run, ex)
               for n in ("exchange_open_orders", "exchange_positions")])


def test_one_fresh_picture_is_evidence():
    assert evidence_problems(stamps(), NOW, 300, 30) == []
    assert evidence_time(stamps()) == NOW - timedelta(seconds=10)


def test_snapshots_of_different_runs_are_refused_naming_the_runs():
    (problem,) = evidence_problems(stamps(db_run="r2"), NOW, 300, 30)
    assert "different runs" in problem and "r1" in problem and "r2" in problem


def test_old_or_far_apart_snapshots_are_refused():
    assert "too old" in evidence_problems(stamps(db_age=400), NOW, 300, 1000)[0]
    assert "apart" in evidence_problems(stamps(db_age=100, ex_age=10), NOW, 300, 30)[0]


def test_a_snapshot_without_its_stamp_is_not_evidence():
    bad = stamps()[:1] + [SnapshotStamp("exchange_positions", "exchange", None, NOW)]
    assert "no run" in evidence_problems(bad, NOW, 300, 30)[0]
    bad = [SnapshotStamp("db_orders", "database", "r1", None)]
    assert "no read time" in evidence_problems(bad, NOW, 300, 30)[0]


# Times in whole milliseconds, so a bound met to the millisecond is met exactly.
millis = st.integers(0, 1_000_000).map(lambda ms: ms / 1000)


@given(db_age=millis, ex_age=millis, same_run=st.booleans(), max_age=millis, max_apart=millis)
def test_evidence_is_accepted_exactly_when_every_bound_holds(db_age, ex_age, same_run, max_age,
                                                               max_apart):
    found = evidence_problems(stamps(ex_run="r1" if same_run else "r9", db_age=db_age,
                                     ex_age=ex_age), NOW, max_age, max_apart)
    ok = same_run and max(db_age, ex_age) <= max_age and abs(db_age - ex_age) <= max_apart
    assert (found == []) == ok


@pytest.mark.parametrize("status,stale", [(None, True), ("SUCCESS", True), ("FAILURE", True),
                                          ("CANCELED", True), ("STARTED", False),
                                          ("QUEUED", False), ("STARTING", False)])
def test_a_gate_is_stale_when_its_run_is_gone(status, stale):
    assert reconciling_gate_verdict(status, 60, 1800).stale is stale


def test_a_gate_of_a_live_run_is_stale_past_the_bound():
    verdict = reconciling_gate_verdict("STARTED", 1801, 1800)
    assert verdict.stale and "still STARTED" in verdict.why


@given(status=st.sampled_from(sorted(LIVE_RUN_STATUSES) + ["SUCCESS", "FAILURE", "CANCELED"]),
       age=st.floats(0, 10_000), bound=st.floats(1, 5000))
def test_a_live_owner_within_the_bound_is_never_taken_over(status, age, bound):
    verdict = reconciling_gate_verdict(status, age, bound)
    assert verdict.stale == (status not in LIVE_RUN_STATUSES or age > bound)


def test_a_run_stopped_from_outside_is_interrupted_not_failed():
    from recon_assets.core.cycle import interrupted

    for reason in ("UNEXPECTED_TERMINATION", "RUN_WORKER_RESTART", "START_TIMEOUT"):
        assert interrupted(reason, "Execution of run for \"reconciliation_cycle\" failed.")
    assert interrupted(None, "Detected run worker status FAILED. Marking run x as failed.")
    for reason in ("STEP_FAILURE", "RUN_EXCEPTION", "JOB_INITIALIZATION_FAILURE", None):
        assert not interrupted(reason, "Execution of run failed. Steps failed: ['exchange_snapshot'].")


@given(st.lists(st.sampled_from([f"acct{i}" for i in range(30)]), max_size=60),
       st.integers(min_value=1, max_value=12))
def test_every_account_is_in_exactly_one_shard_of_at_most_the_size_in_order(accounts, size):
    shards = account_shards(accounts, size)
    flat = [a for shard in shards for a in shard]
    assert flat == list(dict.fromkeys(accounts))  # each once, the schedule's order kept
    assert all(1 <= len(shard) <= size for shard in shards)
    assert all(len(shard) == size for shard in shards[:-1])  # only the last one is short


def test_a_shard_of_no_account_is_refused():
    with pytest.raises(ValueError, match="at least one account"):
        account_shards(["acct1"], 0)


@pytest.mark.parametrize("status,orphan", [
    ("STARTED", False), ("STARTING", False), ("CANCELING", False),
    ("SUCCESS", True), ("FAILURE", True), ("CANCELED", True), (None, True)])
def test_a_cycle_is_orphaned_once_its_shard_run_is_over_or_unknown(status, orphan):
    assert orphaned_cycle(status) is orphan
