"""SIGKILL of the run worker across the whole loop (issue 18): snapshots, diff, parity heartbeat,
EXIT backfill, the watchdog's pause and auto-resume, the sensors and the correction, synthetic
exit and backfill runs. After recovery (run monitoring marks the dead run failed, run retries
run it again, the daemon's ticks go on), the trading tables and `recon.*` equal those of the
uninterrupted loop at the same step.

The loop is the `reliability` scenario over four rounds with the flags compressed so that every
part acts: two confirmations, a 10 % watchdog that pauses alpha in round 0 and auto-resumes it
(no minimum pause, no cooldown) after two clean cycles, corrections of the three lifecycle
kinds, one EXIT backfill GO, one synthetic exit of beta's web-UI close.

The baseline writes a checkpoint (database + Dagster instance) after every step; a kill point
restarts from the checkpoint before its step in a forked run worker, which SIGKILLs itself at
its n-th store call (before it is sent, or after its result came back: committed, unseen), then
a second worker recovers and finishes the step. RECON_KILL_POINTS sets how many (default 50).
"""

import json
import os
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from recon_assets.defs.partitions import exchange_account_partitions, profile_partitions
from recon_assets.simulator.server import SimulatorServer
from recon_assets_tests.conftest import TEMPLATE_DB
from recon_assets_tests.harness.invariants import assert_invariants
from recon_assets_tests.harness.replays import ReplayServer, checkpoint_name
from recon_assets_tests.harness.tables import table_differences, table_rows

pytestmark = pytest.mark.integration

ROUNDS = 4
SETTINGS = {
    "position_parity_max_notional_pct": 10.0, "position_parity_confirmations": 2,
    "watchdog_auto_resume_min_pause_ms": 0, "watchdog_auto_resume_cooldown_ms": 0,
    # Replays run minutes after the baseline: nothing may depend on how long ago it ran.
    "recency_guard_seconds": 0.0, "correction_max_cycle_age_seconds": 86_400.0,
    "evidence_max_age_seconds": 86_400.0,
}
KILL_POINTS = int(os.environ.get("RECON_KILL_POINTS", "50"))
SEED = 18
START = "start"


class Loop:
    """The baseline loop and its checkpoints; `replay(...)` runs a step again from one."""

    def __init__(self, pg_server, base: Path):
        self.pg, self.base = pg_server, base
        self.prefix = f"k{os.getpid()}"
        self.databases: list[str] = []
        random.seed(SEED)  # the scenario's foreign order ids
        self.sim = SimulatorServer(port=0, scenario="reliability")
        self.sim.start()
        # One exchange serves every replay (dozens of loops in minutes): its weight limit is not
        # what this test is about (defs/exchange/test_binance_behaviour.py tests it).
        self.sim.exchange.set_rate_limits(weight_per_minute=10 ** 9)
        self.server = ReplayServer(base / "replays.log")
        plan = self.sim.scenario
        self.partitions = {exchange_account_partitions.name: plan.accounts(),
                           profile_partitions.name: sorted(p["id"] for p in plan.db["profiles"])}

    def database(self, name: str, template: str = TEMPLATE_DB) -> str:
        self.databases.append(name)
        return self.pg.create_database(name, template=template)

    def job(self, dsn: str, home: Path, **extra) -> dict:
        return {"dsn": dsn, "home": str(home), "sim_url": self.sim.url,
                "credentials": self.sim.credentials(), "settings": SETTINGS, "rounds": ROUNDS,
                "admin_dsn": self.pg.dsn(), "partitions": self.partitions, **extra}

    def run_baseline(self) -> list[list[str]]:
        name = checkpoint_name(self.prefix, START)
        dsn = self.database(name)
        self.sim.scenario.seed_database(dsn)
        home = self.base / name
        home.mkdir()
        calls = self.base / "baseline-calls.json"
        segments = self.base / "baseline-segments.json"
        dsn = self.database(f"{self.prefix}_baseline", template=name)
        shutil.copytree(self.base / name, self.base / "baseline")
        outcome = self.server.run(self.job(
            dsn, self.base / "baseline", checkpoints=True, checkpoint_prefix=self.prefix,
            checkpoint_dir=str(self.base), calls_file=str(calls), segments_file=str(segments)))
        assert outcome == {"signal": None, "code": 0}, self.log()
        self.segments = json.loads(segments.read_text())
        self.databases += [checkpoint_name(self.prefix, k) for k in self.segments]
        journal = json.loads((self.base / "baseline" / "loop-journal.json").read_text())
        # What each segment is: the job of a run, else the sensor (or schedule) of a tick.
        self.parts = {f"{r['tick']}#{r['n']}": r["job"] for r in journal["runs"]}
        self.parts.update({s: s.split(":", 1)[1].split("#")[0] for s in self.segments
                           if s.endswith("#0")})
        return json.loads(calls.read_text())

    def after(self, segment: str) -> str:
        """The baseline's database at the end of `segment`."""
        return self.pg.dsn(checkpoint_name(self.prefix, segment))

    def before(self, segment: str) -> str:
        i = self.segments.index(segment)
        return checkpoint_name(self.prefix, self.segments[i - 1] if i else START)

    def replay(self, n: int, step: str, kill_at: int | None, when: str) -> tuple[str, Path]:
        """The segment `step` again from the checkpoint before it, killed at its `kill_at`-th
        call, then recovered by a second worker; returns the database and the instance folder."""
        source = self.before(step)
        name = f"{self.prefix}_r{n}"
        dsn = self.database(name, template=source)
        home = self.base / name
        shutil.copytree(self.base / source, home)
        if kill_at is not None:
            killed = self.server.run(self.job(dsn, home, until=step, kill_at=kill_at, when=when))
            assert killed["signal"] == 9, (f"the worker was not killed at call {kill_at} of {step} "
                                           f"({killed}): the replay is not the baseline's\n{self.log()}")
        recovered = self.server.run(self.job(dsn, home, until=step))
        assert recovered == {"signal": None, "code": 0}, self.log()
        return dsn, home

    def log(self) -> str:
        path = self.base / "replays.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def close(self) -> None:
        self.server.close()
        self.sim.stop()
        for name in self.databases:
            self.pg.drop_database(name)


@pytest.fixture(scope="module")
def loop(pg_server, template_copies):
    base = Path(tempfile.mkdtemp(prefix="recon-kills-"))
    os.chmod(base, 0o755)
    baseline = Loop(pg_server, base)
    try:
        baseline.calls = baseline.run_baseline()
        yield baseline
    finally:
        baseline.close()
        shutil.rmtree(base, ignore_errors=True)


def segment_calls(calls) -> list[tuple[str, int, str]]:
    """[(segment, n-th call of the segment, function)] from the baseline's log."""
    count: Counter = Counter()
    out = []
    for segment, function in calls:
        count[segment] += 1
        out.append((segment, count[segment], function))
    return out


def choose_kill_points(loop, count: int) -> list[tuple[str, int, str, str]]:
    """`count` points (at least one per part of the loop): every (part, function) pair of the
    sensors and the correction, synthetic exit and backfill runs at its first call, then pairs
    of the cycle runs (most of the calls, and the dearest to replay) spread evenly over the
    cycle, then, when there are fewer pairs than `count`, calls drawn at random (seeded).
    Before and after the call in turn. Deterministic."""
    flat = segment_calls(loop.calls)
    firsts, seen = [], set()
    for segment, n, fn in flat:
        if (loop.parts[segment], fn) not in seen:
            seen.add((loop.parts[segment], fn))
            firsts.append((segment, n, fn))
    cycle = [p for p in firsts if loop.parts[p[0]] == "reconciliation_cycle"]
    others = [p for p in firsts if loop.parts[p[0]] != "reconciliation_cycle"]
    room = max(1, count - len(others))
    step = max(1.0, len(cycle) / room)
    chosen = others + [cycle[int(i * step)] for i in range(min(room, len(cycle)))]
    rng = random.Random(SEED)
    taken = {(p[0], p[1]) for p in chosen}
    rest = [p for p in flat if (p[0], p[1]) not in taken]
    chosen += rng.sample(rest, max(0, min(len(rest), count - len(chosen))))
    return [(segment, n, "before" if i % 2 == 0 else "after", fn)
            for i, (segment, n, fn) in enumerate(chosen)]


def test_the_baseline_covers_every_part_of_the_loop(loop, pg_server):
    parts = Counter(loop.parts[segment] for segment, _ in loop.calls)
    for part in ("reconciliation_cycle", "lifecycle_correction", "exit_backfill",
                 "position_parity", "lifecycle_correction_sensor", "escalation_sensor"):
        assert parts[part], f"the baseline made no store call in {part}"
    final = loop.after(loop.segments[-1])
    from recon_assets_tests.harness.dagster_flow import query
    handlers = dict(query(final, "SELECT handler, count(*) FROM recon.corrections "
                                 "WHERE outcome = 'applied' GROUP BY 1"))
    assert set(handlers) == {"reconcile_entry_fill", "reconcile_exit_fill", "reconcile_cancel",
                             "exit_backfill", "synthetic_exit"}
    # The watchdog paused (the ghost and the lost exit's drift charged to their profiles) and
    # every paused profile was resumed automatically once its cycles were clean.
    actions: dict[str, list[str]] = {}
    for profile, action in query(final, "SELECT profile_id, action FROM "
                                        "recon.trading_gate_events ORDER BY id"):
        actions.setdefault(profile, []).append(action)
    assert actions and all(a == ["watchdog_pause", "auto_resume"] for a in actions.values()), \
        actions
    # The invariants held after every tick and run of the uninterrupted loop.
    for segment in loop.segments:
        assert_invariants(loop.after(segment), when=f"after {segment}")


def test_a_replay_without_a_kill_equals_the_baseline(loop, pg_server):
    """The replays are only worth comparing if one without a kill ends as the baseline did."""
    for i, segment in enumerate(("0:reconciliation_cycle_schedule#1",
                                 "0:lifecycle_correction_sensor#1")):
        dsn, _ = loop.replay(900 + i, segment, None, "before")
        expected = table_rows(loop.after(segment))
        assert not table_differences(table_rows(dsn), expected, ("the replay", "the baseline"))


def test_kill_points_across_the_loop_recover_to_the_uninterrupted_state(loop, pg_server):
    points = choose_kill_points(loop, KILL_POINTS)
    assert len(points) >= KILL_POINTS
    # Every part of the loop that makes a store call (the schedule's tick makes none).
    assert {loop.parts[p[0]] for p in points} == {loop.parts[s] for s, _ in loop.calls}
    failures = []
    for i, (step, n, when, fn) in enumerate(points):
        dsn, home = loop.replay(i, step, n, when)
        journal = json.loads((home / "loop-journal.json").read_text())
        expected = table_rows(loop.after(step))
        killed = set(journal.get("killed_runs", []))

        def recovery_only(table, row, killed=killed):
            # The killed run lost its reconciling gate to the run that recovered it: that record
            # is the recovery's, and only a killed run may be named in it.
            return not (table == "recon.reconciling_revoked" and row["cycle_id"] in killed)
        differing = table_differences(table_rows(dsn, keep=recovery_only), expected,
                                      ("the recovered", "the baseline"))
        try:
            assert_invariants(dsn, when=f"after a kill {when} call {n} of {step}")
        except AssertionError as exc:
            differing["invariants"] = str(exc)
        if differing:
            failures.append(f"kill {when} call {n} ({fn}) of {step} ({loop.parts[step]}); killed runs "
                            f"{journal.get('killed_runs', [])}:\n    "
                            + "\n    ".join(f"{t}: {d}" for t, d in differing.items()))
    assert not failures, f"{len(failures)} of {len(points)} kill points:\n" + "\n".join(failures)
