"""Every runbook flag, typed, with the runbook's default and unit, in one settings resource.

`ReconSettings.from_env()` reads the `RECON_*` / `ENABLE_RECON_*` variables. It is called when
the code location loads (inside the `@definitions` loader), never at import time, so a bad value
(`RECON_POSITION_PARITY_CONFIRMATIONS=abc`) stops the code location from loading with a message
that names the variable and what it expects. Values set in the Dagster launchpad go through the
same checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import dagster as dg
from pydantic import model_validator

from recon_assets.resources.guard import RunConfigGuard


class SettingsError(ValueError):
    """One or more runbook flags have a value the reconciler cannot run with."""


@dataclass(frozen=True)
class Flag:
    env: str  # the runbook's variable name
    field: str  # the ReconSettings field
    kind: type  # bool, int or float
    default: Any
    expects: str  # what a valid value is, for the error message
    valid: Callable[[Any], bool] = lambda _v: True
    meaning: str = ""


FLAGS: tuple[Flag, ...] = (
    Flag("ENABLE_RECON_POSITION_PARITY_HEARTBEAT", "enable_position_parity_heartbeat", bool, True,
         "true or false", meaning="Run the ghost-slice parity heartbeat."),
    Flag("RECON_POSITION_PARITY_CONFIRMATIONS", "position_parity_confirmations", int, 3,
         "a whole number >= 1", lambda v: v >= 1,
         "Consecutive mismatching heartbeat checks before a synthetic EXIT."),
    Flag("RECON_POSITION_PARITY_REQUIRE_SUBTAG_ATTRIBUTION",
         "position_parity_require_subtag_attribution", bool, True, "true or false",
         meaning="No synthetic close without sub-tag attribution; unattributed slices are "
                 "quarantined."),
    Flag("RECON_POSITION_PARITY_MAX_NOTIONAL_PCT", "position_parity_max_notional_pct", float, 0.5,
         "a percent greater than 0 and at most 100 (0.5 means 0.5 %)", lambda v: 0 < v <= 100,
         "Integrity watchdog: pause a profile when its cumulative mismatch notional exceeds this "
         "percent of its allocated capital. The unit is percent: 0.5 = 0.5 %."),
    Flag("ENABLE_RECON_WATCHDOG_AUTO_RESUME", "enable_watchdog_auto_resume", bool, True,
         "true or false", meaning="Allow auto-resume after a parity-watchdog pause."),
    Flag("RECON_WATCHDOG_AUTO_RESUME_MIN_PAUSE_MS", "watchdog_auto_resume_min_pause_ms", int,
         900_000, "a whole number of milliseconds >= 0", lambda v: v >= 0,
         "Minimum age of a watchdog pause before auto-resume (ms)."),
    Flag("RECON_WATCHDOG_AUTO_RESUME_CLEAN_CYCLES", "watchdog_auto_resume_clean_cycles", int, 2,
         "a whole number >= 1", lambda v: v >= 1,
         "Consecutive clean reconciliation cycles needed before auto-resume."),
    Flag("RECON_WATCHDOG_AUTO_RESUME_COOLDOWN_MS", "watchdog_auto_resume_cooldown_ms", int,
         1_800_000, "a whole number of milliseconds >= 0", lambda v: v >= 0,
         "Minimum gap between two auto-resumes of one profile (ms)."),
    Flag("RECON_POSITION_PARITY_DRY_RUN", "position_parity_dry_run", bool, False,
         "true or false", meaning="Record every decision, apply nothing."),
    Flag("RECON_EXIT_BACKFILL_REQUIRE_STRONG_ATTRIBUTION",
         "exit_backfill_require_strong_attribution", bool, True, "true or false",
         meaning="Backfill EXITs only from fills tied by sub_tag, deterministic client_order_id "
                 "or trade_id hint."),
    Flag("RECON_EXIT_BACKFILL_ALLOW_HEURISTIC_MATCH", "exit_backfill_allow_heuristic_match", bool,
         False, "true or false",
         meaning="Enable the heuristic `single_open_trade` and `qty_unique` matching modes."),
    Flag("RECON_EXIT_BACKFILL_FILL_AFTER_TRADE_GRACE_MINUTES",
         "exit_backfill_fill_after_trade_grace_minutes", int, 5,
         "a whole number of minutes >= 0", lambda v: v >= 0,
         "Reject fills older than the slice's start minus this grace (minutes)."),
)
# Deployment settings with an environment variable that are not runbook flags.
DEPLOYMENT_FLAGS: tuple[Flag, ...] = (
    Flag("RECON_CYCLE_SHARD_SIZE", "cycle_shard_size", int, 1, "a whole number >= 1",
         lambda v: v >= 1,
         "Accounts per cycle run: 1 = one run per account (reconciliation_cycle_schedule); "
         "more = shard runs of that many accounts (reconciliation_shard_schedule), each "
         "account's cycle still its own run."),
)
FLAGS_BY_FIELD = {flag.field: flag for flag in FLAGS + DEPLOYMENT_FLAGS}
# The runbook flags a policy replay can override (core/replay.py): every flag that changes a
# decision rather than what was recorded (the heartbeat switch and the backfill's grace minutes
# change what the cycles saw, which a replay cannot see again).
REPLAYABLE_FLAGS = tuple(flag for flag in FLAGS if flag.env not in (
    "ENABLE_RECON_POSITION_PARITY_HEARTBEAT", "RECON_EXIT_BACKFILL_FILL_AFTER_TRADE_GRACE_MINUTES"))

# The loop's operational bounds (ReconSettings fields without a variable): each a finite number
# of seconds in [low, high]. NaN would switch a staleness check off (every comparison false).
OPERATIONAL_BOUNDS: dict[str, tuple[float, float]] = {
    "recency_guard_seconds": (0.0, 3600.0),
    "new_order_grace_seconds": (0.0, 3600.0),
    "correction_max_cycle_age_seconds": (0.0, 86_400.0),
    "evidence_max_age_seconds": (0.0, 86_400.0),
    "evidence_max_apart_seconds": (0.0, 3600.0),
    "reconciling_max_age_seconds": (0.0, 604_800.0),
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse(flag: Flag, raw: Any) -> Any:
    """Turn a raw value (an env string, or a typed launchpad value) into the flag's type."""
    if flag.kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError
    if isinstance(raw, bool):  # bool is an int subclass; True is not a count
        raise ValueError
    if flag.kind is int:
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError
        return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
    value = float(str(raw).strip()) if isinstance(raw, str) else float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError
    return value


def _bounded(data: Mapping[str, Any]) -> dict[str, float]:
    """The operational bounds given in `data`, checked (finite, in range); one SettingsError
    naming every bad field."""
    checked: dict[str, float] = {}
    problems: list[str] = []
    for field, (low, high) in OPERATIONAL_BOUNDS.items():
        if field not in data:
            continue
        raw = data[field]
        try:
            value = float(raw) if not isinstance(raw, bool) else float("nan")
        except (TypeError, ValueError):
            value = float("nan")
        if not (low <= value <= high):  # NaN fails every comparison
            problems.append(f"{field}={raw!r}: expected a finite number of seconds from "
                            f"{low:g} to {high:g}")
        else:
            checked[field] = value
    if problems:
        raise SettingsError("invalid reconciliation settings (configuration): "
                            + "; ".join(problems))
    return checked


def _validated(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Parse and check each value; raise one SettingsError naming every bad variable."""
    parsed: dict[str, Any] = {}
    problems: list[str] = []
    for field, raw in values.items():
        flag = FLAGS_BY_FIELD[field]
        try:
            value = _parse(flag, raw)
            ok = flag.valid(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(f"{flag.env}={raw!r}: expected {flag.expects}")
        else:
            parsed[field] = value
    if problems:
        raise SettingsError(f"invalid reconciliation settings ({source}): " + "; ".join(problems))
    return parsed


class ReconSettings(RunConfigGuard, dg.ConfigurableResource):
    """The runbook's reconciliation flags (see the README's table for meanings and units)."""

    enable_position_parity_heartbeat: bool = True
    position_parity_confirmations: int = 3
    position_parity_require_subtag_attribution: bool = True
    position_parity_max_notional_pct: float = 0.5
    enable_watchdog_auto_resume: bool = True
    watchdog_auto_resume_min_pause_ms: int = 900_000
    watchdog_auto_resume_clean_cycles: int = 2
    watchdog_auto_resume_cooldown_ms: int = 1_800_000
    position_parity_dry_run: bool = False
    exit_backfill_require_strong_attribution: bool = True
    exit_backfill_allow_heuristic_match: bool = False
    exit_backfill_fill_after_trade_grace_minutes: int = 5
    # Not runbook flags: operational bounds of the loop itself.
    recency_guard_seconds: float = 5.0  # rows changed this recently are re-checked next cycle
    # A DB order placed this recently that the exchange does not list yet is not missing from
    # it (Binance's API may lag its matching engine: -2013 for a new order for a moment).
    new_order_grace_seconds: float = 30.0
    correction_max_cycle_age_seconds: float = 300.0  # older evidence never drives a correction
    evidence_max_age_seconds: float = 300.0  # the diff refuses snapshots read longer ago
    evidence_max_apart_seconds: float = 30.0  # ... and a database and exchange read further apart
    # A reconciling gate older than this is stale even while its run still looks alive.
    reconciling_max_age_seconds: float = 1800.0
    cycle_shard_size: int = 1  # RECON_CYCLE_SHARD_SIZE (DEPLOYMENT_FLAGS)

    @model_validator(mode="before")
    @classmethod
    def _check_values(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = {k: v for k, v in data.items() if k in FLAGS_BY_FIELD}
            return {**data, **_validated(known, "configuration"), **_bounded(data)}
        return data

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ReconSettings":
        """Settings from the runbook's environment variables; unset ones take the default."""
        env = os.environ if environ is None else environ
        raw = {flag.field: env[flag.env] for flag in FLAGS + DEPLOYMENT_FLAGS if flag.env in env}
        return cls(**_validated(raw, "environment"))


def replay_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """A policy replay's overrides, by the runbook's variable names (`{"RECON_POSITION_PARITY_
    CONFIRMATIONS": 1}`), as ReconSettings field values; an unknown or not replayable name, or a
    bad value, is a SettingsError naming every one."""
    by_env = {flag.env: flag for flag in REPLAYABLE_FLAGS}
    unknown = sorted(name for name in values if name not in by_env)
    if unknown:
        raise SettingsError(
            "not a runbook flag a policy replay can override: " + ", ".join(unknown)
            + " (replayable: " + ", ".join(sorted(by_env)) + ")")
    return _validated({by_env[name].field: value for name, value in values.items()},
                      "policy replay overrides")
