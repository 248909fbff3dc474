"""The rules of one reconciliation cycle that are not the diff itself (plain Python, no Dagster):
which evidence a diff may be made from, and when a profile's reconciling gate is stale.

Evidence (safety rule 1 and issue 10): a cycle's diff compares the database snapshot with the
exchange snapshot. It is made only when every snapshot it reads

- says when it was read and by which run (a frame without its stamp is not evidence),
- was read by the same run as the others (snapshots of different runs are two pictures),
- is at most `max_age_s` old now, and
- the database and the exchange were read at most `max_apart_s` apart.

The reconciling gate (safety rule 11): a profile's `reconciling` session belongs to one run. It
is stale when that run is no longer running (Dagster says so, or knows no such run), or when the
session is older than `max_age_s` (a run that hangs must not halt trading for ever).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

# Why Dagster failed a run when the run itself did not fail: its worker was stopped (a demo or
# daemon shut down, a deploy), restarted, or never started in time. Such a cycle was
# interrupted, not failed: the next cycle runs it again, and staleness catches a real outage.
INTERRUPTION_REASONS = frozenset({"UNEXPECTED_TERMINATION", "RUN_WORKER_RESTART", "START_TIMEOUT"})


def interrupted(failure_reason: str | None, message: str | None) -> bool:
    """Whether a failed run was interrupted rather than failed (see INTERRUPTION_REASONS; run
    monitoring's "Detected run worker status ..." is the same case)."""
    return (failure_reason in INTERRUPTION_REASONS
            or (message or "").startswith("Detected run worker status"))


# Dagster run statuses of a run that may still act (queued ones included: they will start).
LIVE_RUN_STATUSES = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"})


@dataclass(frozen=True)
class SnapshotStamp:
    """When a snapshot frame was read, and by which run (the cycle that materialized it)."""

    name: str
    side: str  # "database" or "exchange"
    run_id: str | None
    read_at: datetime | None


def frame_stamps(frames: Mapping[str, pd.DataFrame]) -> list[SnapshotStamp]:
    """The stamp each snapshot frame carries (`attrs` read_at and run_id, set by the asset that
    read it), named by its asset; `db_*` frames are the database side."""
    return [SnapshotStamp(name, "database" if name.startswith("db_") else "exchange",
                          frame.attrs.get("run_id"),
                          pd.Timestamp(frame.attrs["read_at"]).floor("us").to_pydatetime()
                          if frame.attrs.get("read_at") else None)
            for name, frame in frames.items()]


def evidence_problems(stamps: Sequence[SnapshotStamp], now: datetime, max_age_s: float,
                      max_apart_s: float) -> list[str]:
    """Why these snapshots may not be diffed (an empty list: they may)."""
    problems = [f"{s.name} says no {'read time' if s.read_at is None else 'run'}: it is not "
                "evidence a diff can be made from"
                for s in stamps if s.read_at is None or not s.run_id]
    if problems:
        return problems
    runs = sorted({s.run_id for s in stamps})
    if len(runs) > 1:
        by_run = {r: sorted(s.name for s in stamps if s.run_id == r) for r in runs}
        problems.append("the snapshots were read by different runs ("
                        + "; ".join(f"{r}: {', '.join(names)}" for r, names in by_run.items())
                        + "): materialize the whole cycle")
    oldest = min(stamps, key=lambda s: s.read_at)
    age = (now - oldest.read_at).total_seconds()
    if age > max_age_s:
        problems.append(f"{oldest.name} was read {age:.0f} s ago, too old (bound {max_age_s:g} s)")
    sides = {}
    for s in stamps:
        sides.setdefault(s.side, []).append(s.read_at)
    if len(sides) == 2:
        (a, a_times), (b, b_times) = sorted(sides.items())
        apart = abs((min(a_times) - min(b_times)).total_seconds())
        if apart > max_apart_s:
            problems.append(f"the {a} and the {b} were read {apart:.1f} s apart, too far apart "
                            f"(bound {max_apart_s:g} s): not one picture")
    return problems


def evidence_time(stamps: Sequence[SnapshotStamp]) -> datetime:
    """The moment the evidence describes: the earliest read (what ages first)."""
    return min(s.read_at for s in stamps if s.read_at is not None)


@dataclass(frozen=True)
class GateVerdict:
    stale: bool
    why: str


def reconciling_gate_verdict(owner_status: str | None, age_s: float,
                             max_age_s: float) -> GateVerdict:
    """Whether a reconciling session whose owning run has `owner_status` (a Dagster run status
    name, None when the instance knows no such run) and is `age_s` old is stale."""
    if owner_status is None:
        return GateVerdict(True, "its run is unknown to Dagster")
    if owner_status not in LIVE_RUN_STATUSES:
        return GateVerdict(True, f"its run ended ({owner_status})")
    if age_s > max_age_s:
        return GateVerdict(True, f"it is {age_s:.0f} s old (bound {max_age_s:g} s) while its run "
                                 f"is still {owner_status}")
    return GateVerdict(False, f"its run is {owner_status}")


def account_shards(accounts: Sequence[str], size: int) -> list[list[str]]:
    """The accounts cut into shards of at most `size`, in the order given (the schedule's
    order: the longest waiting first), each account in exactly one shard. One shard is one
    Dagster run whose cycles run one after the other in its process (issue 16): the run's
    process start is paid once per shard instead of once per account."""
    if size < 1:
        raise ValueError(f"a shard holds at least one account, not {size}")
    ordered = list(dict.fromkeys(accounts))  # an account named twice is cycled once
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def orphaned_cycle(shard_run_status: str | None) -> bool:
    """Whether a cycle run of a shard that Dagster still shows as running is an orphan: its
    shard run (whose process ran it) is over or unknown, so nothing is running it any more and
    it must not hold the account's next cycle back."""
    return shard_run_status is None or shard_run_status not in LIVE_RUN_STATUSES
