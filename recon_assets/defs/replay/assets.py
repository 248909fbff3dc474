"""The policy replay: the recorded history folded again with other runbook flags (the rules are
in `core/replay.py`); the result is recorded in recon.policy_replays and
recon.policy_replay_events (keyed by the run id) and shown in the UI. Nothing here touches the
trading tables."""


from dataclasses import asdict
from datetime import datetime

import dagster as dg
import pandas as pd
from pydantic import Field

from recon_assets.core.backfill import BackfillPolicy
from recon_assets.core.parity import ParityPolicy
from recon_assets.core.replay import EVENT_COLUMNS, LIVE, REPLAY, ReplayPolicy, replay
from recon_assets.core.watchdog import ResumePolicy
from recon_assets.defs.metadata import md_table
from recon_assets.defs.operator_record import record_launch
from recon_assets.resources.database import TradingStore
from recon_assets.resources.replay_store import ReplayStore, events_query
from recon_assets.settings import REPLAYABLE_FLAGS, ReconSettings, SettingsError, replay_overrides

SHOWN_EVENTS = ["policy", "day", "profile_id", "kind", "cycle_id", "trade_id", "slice_no",
                "notional_usd", "heuristic", "duration_s", "cycles_from_live", "detail"]


class PolicyReplayConfig(dg.Config):
    """The Launchpad's form: the range, whom to show, and the flags to try (by the runbook's
    names, values as text, e.g. RECON_POSITION_PARITY_CONFIRMATIONS: "1")."""

    since: str = Field(default="", description="ISO time; empty: the start of the history")
    until: str = Field(default="", description="ISO time (exclusive); empty: now")
    accounts: list[str] = Field(default=[], description="exchange accounts; empty: all")
    profiles: list[str] = Field(default=[], description="profiles shown; empty: all")
    overrides: dict[str, str] = Field(
        default={}, description="runbook flag -> value, e.g. RECON_POSITION_PARITY_MAX_NOTIONAL_PCT: '0.2'")


def _time(text: str, name: str) -> datetime | None:
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise dg.Failure(f"{name}={text!r} is not an ISO time (e.g. 2026-12-01T00:00:00+00:00)") \
            from None
    if at.tzinfo is None:
        raise dg.Failure(f"{name}={text!r} has no time zone: add +00:00 for UTC")
    return at


def flag_values(settings: ReconSettings, overrides: dict | None = None) -> dict[str, object]:
    """The replayable flags by runbook name: the settings', with `overrides` (field -> value)."""
    values = {**{f.field: getattr(settings, f.field) for f in REPLAYABLE_FLAGS}, **(overrides or {})}
    return {f.env: values[f.field] for f in REPLAYABLE_FLAGS}


def replay_policy(settings: ReconSettings, overrides: dict | None = None) -> ReplayPolicy:
    """The flags a replay decides by: the settings', with `overrides` (field -> value)."""
    v = {**settings.model_dump(), **(overrides or {})}
    return ReplayPolicy(
        parity=ParityPolicy(v["position_parity_confirmations"],
                            v["position_parity_require_subtag_attribution"],
                            v["position_parity_dry_run"]),
        max_notional_pct=v["position_parity_max_notional_pct"],
        resume=ResumePolicy(v["enable_watchdog_auto_resume"],
                            v["watchdog_auto_resume_min_pause_ms"],
                            v["watchdog_auto_resume_clean_cycles"],
                            v["watchdog_auto_resume_cooldown_ms"]),
        backfill=BackfillPolicy(v["exit_backfill_require_strong_attribution"],
                                v["exit_backfill_allow_heuristic_match"],
                                v["exit_backfill_fill_after_trade_grace_minutes"]))


def _markdown_summary(result, overrides: dict[str, object], since, until) -> str:
    changed = ", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "none (the live flags)"
    lines = [f"**Policy replay** of {result.live.cycles} judged cycle(s), "
             f"{since.isoformat() if since else 'the start'} to "
             f"{until.isoformat() if until else 'now'}; overrides: {changed}.", ""]
    if result.fidelity_ok:
        lines.append("Fidelity: the live flags reproduce every recorded decision.")
    else:
        d = result.first_difference
        lines.append(f"**Replay defect**: {len(result.differences)} recorded decision(s) not "
                     f"reproduced; first in cycle `{d['cycle_id']}` ({d['what']} {d['key']}: "
                     f"recorded {d['recorded']}, replayed {d['replayed']}).")
    lines.append("")
    if not result.summary:
        lines.append("_Neither policy produced an event in the range._")
    for row in result.summary:
        parts = []
        for kind in ("synthetic_exit", "quarantine", "watchdog_pause", "auto_resume",
                     "backfill_go"):
            a, b = row.get(f"{LIVE}_{kind}", 0), row.get(f"{REPLAY}_{kind}", 0)
            if a or b:
                parts.append(f"{kind} {a} → {b}")
        lines.append(f"- `{row['profile_id']}`: " + "; ".join(parts))
    return "\n".join(lines)


@dg.asset(group_name="replay", kinds={"postgres"})
def policy_replays(context: dg.AssetExecutionContext, config: PolicyReplayConfig,
                  settings: ReconSettings, database: TradingStore) -> dg.MaterializeResult:
    """What the runbook flags would have done over the recorded history: the live loop's own rules folded over the recorded cycles with the live flags (checked against the record) and with the overrides, side by side; rows in recon.policy_replay_events by replay id."""
    record_launch(context, database)
    since, until = _time(config.since, "since"), _time(config.until, "until")
    if since and until and since >= until:
        raise dg.Failure(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    try:
        overrides = replay_overrides(config.overrides)
    except SettingsError as error:
        raise dg.Failure(str(error)) from None
    store = ReplayStore(database)
    history = store.history(until, list(config.accounts))
    context.log.info(f"replaying {len(history.cycles)} recorded cycle(s), "
                     f"{len(history.checks)} heartbeat check(s), {len(history.verdicts)} "
                     f"verdict(s), {len(history.backfill)} backfill candidate(s)")
    result = replay(history, replay_policy(settings), replay_policy(settings, overrides),
                    since=since, until=until, profiles=list(config.profiles))
    if not result.fidelity_ok:
        context.log.error(f"replay defect: the live flags do not reproduce "
                          f"{len(result.differences)} recorded decision(s); first: "
                          f"{result.first_difference}")
    shown_overrides = {name: value for name, value in flag_values(settings, overrides).items()
                       if value != flag_values(settings)[name]}
    recorded = store.record(
        context.run.run_id, since=since, until=until, accounts=list(config.accounts),
        profiles=list(config.profiles), overrides=shown_overrides,
        live_flags=flag_values(settings), replay_flags=flag_values(settings, overrides),
        cycles=result.live.cycles, fidelity_ok=result.fidelity_ok,
        first_difference=result.first_difference, differences=len(result.differences),
        summary=result.summary, events=result.events)
    events = pd.DataFrame(result.events, columns=list(EVENT_COLUMNS))
    return dg.MaterializeResult(metadata={
        "replay_id": context.run.run_id,
        "summary": dg.MetadataValue.md(_markdown_summary(result, shown_overrides, since, until)),
        "fidelity_ok": result.fidelity_ok,
        "differences": len(result.differences),
        "first_difference": dg.MetadataValue.json(result.first_difference or {}),
        "cycles_replayed": result.live.cycles,
        "events_recorded": int(recorded.get("events", 0)),
        "overrides": dg.MetadataValue.json(shown_overrides),
        "per_profile": md_table(pd.DataFrame(result.summary), "_no event in the range_"),
        "per_day": md_table(pd.DataFrame(result.per_day), "_no event in the range_"),
        "events": md_table(events[SHOWN_EVENTS], "_no event in the range_", rows=200),
        "query": dg.MetadataValue.md(f"```sql\n{events_query(context.run.run_id)}\n```"),
        **{f"{policy}/{kind}": int(sum(1 for e in result.events
                                       if e["policy"] == policy and e["kind"] == kind))
           for policy in (LIVE, REPLAY)
           for kind in ("synthetic_exit", "quarantine", "watchdog_pause", "auto_resume",
                        "backfill_go")},
    })
