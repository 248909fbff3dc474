"""How the jobs that change money apply their decisions (lifecycle corrections, the parity
heartbeat's synthetic exits, the EXIT backfill): from a fresh cycle, owning the profile's
reconciling gate, through the SQL functions under the profile's lock, one decision at a time,
recording what was refused; and how a sensor launches them for each profile a new cycle decided
something for.

The jobs are partitioned by profile, so every run (sensor, Launchpad, backfill) carries the
`recon/profile` tag the run queue allows once at a time.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dagster as dg
import pandas as pd
import psycopg

from recon_assets.core.corrections import Refusal, lock_wait_of, refusal_of
from recon_assets.core.cycle import reconciling_gate_verdict
from recon_assets.defs.metadata import md_table
from recon_assets.defs.partitions import profile_partitions
from recon_assets.defs.runs import cycle_id_of_run, newest_attempt, run_status
from recon_assets.resources.database import TradingStore, connection_lost
from recon_assets.resources.recon_store import ReconStore
from recon_assets.resources.trading_tables import TradingTables


class ProfileCycleConfig(dg.Config):
    """The config of a job that applies one profile's decisions of one cycle."""

    profile_id: str
    cycle_id: str = ""  # empty: the latest succeeded cycle of the profile's account


class StaleCycleError(RuntimeError):
    """The cycle's snapshots are too old to act on."""


def resolve_cycle(database: TradingStore, profile_id: str, cycle_id: str, max_age_s: float) -> dict:
    """The cycle a job acts from (the profile's account's latest succeeded one, or `cycle_id`),
    refused when its evidence is older than `max_age_s`."""
    profile = TradingTables(database).profile(profile_id)
    if profile is None:
        raise ValueError(f"unknown profile {profile_id!r}")
    cycle = ReconStore(database).latest_succeeded_cycle(profile["exchange_account"], cycle_id)
    if cycle is None:
        raise ValueError(f"no succeeded reconciliation cycle {cycle_id or ''} for the account "
                         f"{profile['exchange_account']} of profile {profile_id}")
    if float(cycle["age_s"]) > max_age_s:
        raise StaleCycleError(
            f"the evidence of cycle {cycle['cycle_id']} was read {float(cycle['age_s']):.0f} s "
            f"ago (bound {max_age_s:.0f} s): its snapshots are stale, no correction is made "
            "from them")
    return cycle


def own_attempts_decisions(context: dg.OpExecutionContext, cycle_id: str,
                           rows: Sequence[dict]) -> tuple[list[dict], str | None]:
    """The decisions a job may act on: those the newest attempt of their cycle recorded. A
    retried cycle that found its first attempt's decisions recorded (made from that attempt's
    snapshots, which the retry read again) acts on none of them; the next cycle decides again.
    Returns (rows, why the others are not applied)."""
    newest = newest_attempt(context.instance, cycle_id)
    mine = [r for r in rows if r.get("run_id") in (None, newest)]
    if len(mine) == len(rows):
        return mine, None
    earlier = sorted({r["run_id"] for r in rows if r.get("run_id") not in (None, newest)})
    return mine, (f"{len(rows) - len(mine)} decision(s) of cycle {cycle_id} were recorded by "
                  f"its earlier attempt {', '.join(earlier)} from that attempt's snapshots, not "
                  f"by its newest attempt {newest}: not applied, the next cycle decides again")


class LockContention(RuntimeError):
    """A lock a correction needs was held longer than the store's lock_timeout."""


def call_under_lock(database: TradingStore, function: str, params: dict, profile_id: str,
                    cycle_id: str) -> dict:
    """Call a SQL function that takes the profile's reconciliation lock; a lock wait that times
    out is recorded in recon.lock_contention with the lock it waited for (the reconciliation
    lock, or a row lock of the trading app) and raised as LockContention.

    A call whose connection broke under it (`connection_lost`: before, during or after its
    commit, nobody knows which) is sent once more, on a fresh connection: every function called
    here is idempotent (a correction by its idempotency key, the gate by its owner), so the
    second answer says what happened: applied now, or `already_applied` by the first. Without
    it a committed correction would be recorded as failed and escalated."""
    started = time.monotonic()
    try:
        try:
            return database.call(function, params)
        except psycopg.OperationalError as exc:
            if not connection_lost(exc):
                raise
            return database.call(function, params)
    except psycopg.errors.LockNotAvailable as exc:
        waited_ms = int((time.monotonic() - started) * 1000)
        kind, what = lock_wait_of(exc.diag.context)
        ReconStore(database).record_lock_contention(profile_id, cycle_id, waited_ms, kind, what)
        lock = ("the reconciliation lock" if what == "profile"
                else f"a row lock on {what or 'a trading table'}")
        raise LockContention(f"{lock} of profile {profile_id} was busy for {waited_ms} ms; "
                             "recorded as contention, retried next cycle") from None


def begin_gate(context: dg.OpExecutionContext, database: TradingStore, profile: str,
               run_id: str, max_age_s: float) -> dict:
    """Own the profile's reconciling gate, taking it over only from an owner that is gone. A run
    that lost the gate (its session was restored or taken over) never owns it again."""
    params = {"p_profile_id": profile, "p_cycle_id": run_id}
    try:
        began = call_under_lock(database, "recon_begin_reconciling", params, profile, run_id)
        if began["status"] == "revoked":
            raise dg.Failure(f"profile {profile}: {began['reason']}; this run corrects nothing "
                             "(the next correction run starts from a fresh cycle)")
        if began["status"] != "busy":
            return began
        owner = began["owner"]
        session = ReconStore(database).reconciling_owner(profile)
        verdict = reconciling_gate_verdict(run_status(context.instance, owner),
                                           float(session["age_s"]) if session else 0.0, max_age_s)
        if not verdict.stale:
            raise dg.Failure(f"profile {profile} is reconciling under run {owner} "
                             f"({verdict.why}); this run corrects nothing and leaves the gate to "
                             "its owner")
        took = call_under_lock(database, "recon_begin_reconciling",
                               {**params, "p_take_over_from": owner}, profile, run_id)
    except LockContention as exc:
        raise dg.Failure(str(exc)) from None
    if took["status"] == "busy":
        raise dg.Failure(f"profile {profile}: the reconciling gate changed hands to run "
                         f"{took['owner']} while this run took it over; this run corrects nothing")
    if took["status"] == "revoked":
        raise dg.Failure(f"profile {profile}: {took['reason']}; this run corrects nothing")
    context.log.warning(f"profile {profile}: took the reconciling gate over from run {owner} "
                        f"({verdict.why})")
    return took


def end_gate(context: dg.OpExecutionContext, database: TradingStore, profile: str,
             run_id: str) -> None:
    """Give the gate back (only the owner's end restores trading; a run that lost the gate
    meanwhile restores nothing, and says so)."""
    try:
        ended = call_under_lock(database, "recon_end_reconciling",
                                {"p_profile_id": profile, "p_cycle_id": run_id}, profile, run_id)
    except LockContention as exc:
        context.log.warning(f"{exc}; the next cycle restores the trading state")
        return
    if (ended or {}).get("revoked"):
        context.log.warning(f"profile {profile}: {ended['reason']}; the gate is not this run's "
                            "to end")


def record_refusal(context: dg.OpExecutionContext, database: TradingStore, run_id: str,
                   profile: str, handler: str, refusal: Refusal, trade_id: str | None,
                   client_order_id: str | None, dry_run: bool, evidence: dict) -> None:
    """A decision a check refused or an error stopped: recorded (and so escalated), logged."""
    ReconStore(database).record_refused_correction(
        run_id, profile, handler, refusal.outcome, refusal.reason, trade_id, client_order_id,
        dry_run, {"error": refusal.message, **evidence})
    context.log.error(f"{client_order_id or trade_id}: {refusal.outcome} ({refusal.reason}): "
                      f"{refusal.message}; recorded, the others go on")


def profile_partitioned_config(op_name: str, extra: dict | None = None) -> dg.PartitionedConfig:
    """A job's config per profile partition: the op's `profile_id`, and the `recon/profile`
    tag the run queue limits to one run at a time."""
    return dg.PartitionedConfig(
        partitions_def=profile_partitions,
        run_config_for_partition_key_fn=lambda profile: {
            "ops": {op_name: {"config": {"profile_id": profile, **(extra or {})}}}},
        tags_for_partition_key_fn=lambda profile: {"recon/profile": profile})


def check_partition(context: dg.OpExecutionContext, profile_id: str) -> None:
    if context.has_partition_key and context.partition_key != profile_id:
        raise dg.Failure(f"this run's partition is profile {context.partition_key} but its config "
                         f"names profile {profile_id}: one of them is wrong")


@dataclass(frozen=True)
class Application:
    """One decision as a SQL call: the function, its arguments, and what a refusal records."""

    function: str
    params: dict
    trade_id: str | None
    client_order_id: str | None = None
    evidence: dict = field(default_factory=dict)


def apply_each(context: dg.OpExecutionContext, database: TradingStore, *, profile: str,
               dry_run: bool, max_age_s: float, handler: str, rows: Sequence[dict],
               application: Callable[[dict], Application],
               outcome: Callable[[dict], dict]) -> list[dict]:
    """Apply `rows` of one profile in order, owning its reconciling gate (not in dry run, which
    changes nothing, not even the gate). Each row is its own unit: a refusal or an error is
    recorded in recon.corrections (and so escalated) and the others go on; lock contention ends
    the profile's turn (the rest waits for the next cycle). `outcome(row)` is the row's line in
    the run's table; its `status` becomes what the handler answered."""
    outcomes: list[dict] = []
    if not rows:
        return outcomes
    run_id = context.run.run_id
    if not dry_run:
        begin_gate(context, database, profile, run_id, max_age_s)
    try:
        for row in rows:
            line = {**outcome(row), "status": "not_applied"}
            call = application(row)
            try:
                result = call_under_lock(database, call.function, call.params, profile, run_id)
                line["status"] = (result or {}).get("status", "applied")
            except LockContention as exc:
                line.update(status="lock_contention", reason=str(exc))
                outcomes.append(line)
                context.log.warning(str(exc))
                break
            except Exception as exc:  # noqa: BLE001 - one decision's failure never stops the others
                refusal = refusal_of(exc)
                record_refusal(context, database, run_id, profile, handler, refusal,
                               call.trade_id, call.client_order_id, dry_run, call.evidence)
                line.update(status=refusal.outcome, reason=refusal.reason)
            outcomes.append(line)
            context.log.info(f"{call.trade_id or call.client_order_id}: -> {line['status']}")
    finally:
        if not dry_run:
            end_gate(context, database, profile, run_id)
    return outcomes


def report_outcomes(context: dg.OpExecutionContext, profile: str, outcomes: list[dict],
                    columns: list[str], table: str, empty: str, metadata: dict) -> None:
    """The run's table of outcomes and counts per status; lock contention fails the run (what is
    left waits for the next cycle)."""
    frame = pd.DataFrame(outcomes, columns=columns)
    counts = frame["status"].value_counts().to_dict() if len(frame) else {}
    context.add_output_metadata({**metadata, table: md_table(frame, empty),
                                 **{f"status/{k}": int(v) for k, v in counts.items()}})
    if counts.get("lock_contention"):
        raise dg.Failure(f"a lock of {profile} was busy; the decision(s) left wait for the next "
                         "cycle")


def decisions_sensor(*, name: str, asset: str, job: dg.JobDefinition, op_name: str,
                     profiles: Callable[[TradingStore, str, str], list[str]],
                     description: str) -> dg.SensorDefinition:
    """A sensor that, on each new materialization of `asset` (one cycle of one account), launches
    `job` for every profile `profiles(database, cycle_id, account)` names, from that cycle (the
    run key makes it once per cycle and profile)."""
    asset_key = dg.AssetKey(asset)

    @dg.sensor(name=name, job=job, minimum_interval_seconds=15,
               default_status=dg.DefaultSensorStatus.RUNNING, description=description)
    def _sensor(context: dg.SensorEvaluationContext, database: TradingStore):
        after = int(context.cursor) if context.cursor else None
        result = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, after_storage_id=after), limit=100,
            ascending=True)
        requests: list[dg.RunRequest] = []
        last = after
        for record in result.records:
            event = record.event_log_entry
            account = event.dagster_event.partition
            cycle_id = cycle_id_of_run(context.instance, event.run_id)
            if account:
                for profile in profiles(database, cycle_id, account):
                    requests.append(dg.RunRequest(
                        run_key=f"{job.name}:{cycle_id}:{profile}", partition_key=profile,
                        run_config={"ops": {op_name: {"config": {
                            "profile_id": profile, "cycle_id": cycle_id}}}},
                        tags={"recon/profile": profile, "recon/cycle": cycle_id}))
            last = record.storage_id
        if last is None:
            return dg.SkipReason(f"no {asset} materialization yet")
        known = set(context.instance.get_dynamic_partitions(profile_partitions.name))
        new = sorted({r.partition_key for r in requests} - known)
        return dg.SensorResult(
            run_requests=requests, cursor=str(last),
            dynamic_partitions_requests=[profile_partitions.build_add_request(new)] if new else [])

    return _sensor
