"""The runbook's health numbers, computed from the state persisted in the database.

Everything here is read from the database on each request (nothing is kept in memory), so the
numbers survive a restart of the metrics server and agree across replicas. One call of the SQL
function `recon_health_state` per request (one statement, so one snapshot: every number of one
answer comes from the same moment), through either backend of the trading database.

Which accounts count ("watched accounts"): the exchange accounts named in `profiles`; an account
whose profiles are gone stops counting. If `profiles` is empty, every account in `recon.cycles`.

`/internal/health` fields (names are the runbook's) and what they mean:

- `reconciliationLoopHealthy`: true only when every watched account has a succeeded cycle that
  finished at most `stale_after_s` ago (by the database clock), and its latest finished cycle
  (succeeded or failed; a cycle still running does not count) did not fail. False when there is
  no watched account or no cycle at all.
- `reconciliationLastRun`: ISO-8601 (UTC) finish time of the most recent finished cycle of any
  watched account, succeeded or failed; null if none.
- Current counts, from the latest succeeded cycle of each watched account (its `recon.cycles` row
  and the `recon.mismatches` rows with that `cycle_id` and `exchange_account`), summed over
  accounts:
  - `reconciliationMismatchCount`: all its mismatch rows, every kind;
  - `reconciliationMissingFromExchange`: rows of kind `missing_from_exchange` (open in the
    database, absent on the exchange);
  - `reconciliationMissingInDb`: rows of kind `missing_in_db` (on the exchange, absent in the
    database, attributable or foreign);
  - `reconciliationParityMismatchTrades`: distinct trades (profile, trade id) with a ghost in the
    parity heartbeat's checks of that cycle (`recon.parity_checks`, `ghost`: virtual open qty
    in the database the exchange does not hold; 0 while the heartbeat is off);
  - `reconciliationParityMaxMismatchNotionalUsd` / `reconciliationParityTotalMismatchNotionalUsd`:
    the largest / the sum of `mismatch_notional_usd` over those ghost checks (0 when none).
- `reconciliationParityQuarantinedTrades`: open quarantines now (`recon.quarantine` rows with
  `released_at` null), all profiles.
- `reconciliationParityAutoClosedTrades`: synthetic EXITs applied so far (`recon.corrections` with
  handler `synthetic_exit`, not `dry_run`), all time.
- `reconciliationIntegrityWatchdogTriggered`: true while any profile is paused with pause source
  `parity_watchdog` (public.profiles); false again once it is resumed (or an operator took the
  pause over).
- `reconciliationUnchargedDriftUsd`: the position drift (USD) the integrity watchdog could charge
  to no profile in the latest succeeded cycle of each watched account, summed (an account-level
  finding: no order, fill or database position points at a profile; `core.watchdog`), and
  `reconciliationUnchargedDriftAccounts`, the accounts with such drift. Each account's
  `unchargedDrift` lists the drifts (symbol, leg, difference, notional, why).

Extra fields: `accounts` (the same per watched account, with why it is or is not healthy),
`profiles` (the trading gate of every profile: `profileId`, `account`, `tradingState` active /
reconciling / paused, `pauseSource`, `pausedAt`, `lastAutoResumeAt`, `watchdogTriggered`, the
last verdict's `mismatchNotionalUsd` and `thresholdUsd`, and while paused `autoResumeHeldBackBy`
(the conditions that do not hold) and `autoResumeEarliestAt` (the earliest moment auto-resume
could happen, null when it never will by itself: an operator's pause, or auto-resume off)),
`staleAfterSeconds`, `checkedAt`.

Cumulative counters (for `/metrics`): every finding ever recorded in `recon.mismatches`, all kinds,
and those of kind `missing_from_exchange` / `missing_in_db`. The table is append-only (a trigger
refuses UPDATE and DELETE), so these only grow, and they survive restarts.

Every read is bounded, whatever the length of the history (a scrape comes every few seconds):
the latest cycles of each account are index probes, and the all-time totals (findings, applied
synthetic exits, lock contention, alerts by delivery status) come from small tables the history
tables' triggers keep in the writing transaction (migration 0024, `db/functions/recon.count_*`),
one row per account or profile and kind.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg

from recon_assets.core.rules import (ALERT_GIVEN_UP, ALERT_PENDING, APPLIED, CYCLE_FAILED,
                                     CYCLE_SUCCEEDED, MISSING_FROM_EXCHANGE, MISSING_IN_DB, PAUSED,
                                     SYNTHETIC_EXIT, WATCHDOG_PAUSE_SOURCE)
from recon_assets.resources.database import (DatabaseUnavailable, PostgresStore, TradingStore,
                                             as_datetime, connection_failure)
from recon_assets.resources.supabase_store import SupabaseStoreError

# The runbook's /internal/health fields, in the runbook's order.
RUNBOOK_FIELDS = (
    "reconciliationLoopHealthy",
    "reconciliationMismatchCount",
    "reconciliationLastRun",
    "reconciliationMissingFromExchange",
    "reconciliationMissingInDb",
    "reconciliationParityMismatchTrades",
    "reconciliationParityQuarantinedTrades",
    "reconciliationParityAutoClosedTrades",
    "reconciliationParityMaxMismatchNotionalUsd",
    "reconciliationParityTotalMismatchNotionalUsd",
    "reconciliationIntegrityWatchdogTriggered",
)

DEFAULT_STALE_AFTER_S = 300.0


class HealthUnavailable(RuntimeError):
    """The persisted state could not be read; the message names no password or user."""


@dataclass
class ReconState:
    """One consistent reading: the runbook health fields and the cumulative counters."""

    health: dict[str, Any]
    cumulative: dict[str, int] = field(default_factory=dict)
    # The latest succeeded cycles' findings per watched account, profile and kind (findings,
    # notional_usd), and the alerts per account, profile and reason (raised, last_day,
    # undelivered): the labelled /metrics series.
    breakdown: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)


def _iso(value: datetime | str | None) -> str | None:
    """A timestamp (a datetime, or the ISO text it travels as in JSON) in ISO-8601, UTC."""
    value = as_datetime(value)
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


def _account_health(row: dict, stale_after_s: float) -> dict[str, Any]:
    if row["last_status"] is None:
        healthy, reason = False, "no finished reconciliation cycle"
    elif row["last_status"] == "failed":
        healthy, reason = False, f"last cycle {row['last_cycle_id']} failed"
    elif row["success_age_s"] is None:
        healthy, reason = False, "no succeeded cycle"
    elif row["success_age_s"] > stale_after_s:
        healthy, reason = False, (f"last succeeded cycle finished {row['success_age_s']:.0f}s ago "
                                  f"(bound {stale_after_s:g}s)")
    else:
        healthy, reason = True, None
    return {
        "account": row["account"],
        "healthy": healthy,
        "reason": reason,
        "lastCycleId": row["last_cycle_id"],
        "lastCycleStatus": row["last_status"],
        "lastRun": _iso(row["last_finished_at"]),
        "lastSucceededCycleId": row["success_cycle_id"],
        "lastSucceededRun": _iso(row["success_finished_at"]),
        "mismatchCount": row["mismatches"],
        "missingFromExchange": row["missing_from_exchange"],
        "missingInDb": row["missing_in_db"],
        "parityMismatchTrades": row["ghost_trades"],
        "parityMaxMismatchNotionalUsd": row["ghost_max_usd"],
        "parityTotalMismatchNotionalUsd": row["ghost_total_usd"],
        "unchargedDriftUsd": row["uncharged_drift_usd"],
        "unchargedDrift": list(row["uncharged_drift"] or []),
    }


def _profile_gate(row: dict) -> dict[str, Any]:
    paused = row["trading_state"] == PAUSED
    return {
        "profileId": row["id"], "account": row["exchange_account"],
        "tradingState": row["trading_state"], "pauseSource": row["pause_source"],
        "pausedAt": _iso(row["paused_at"]), "lastAutoResumeAt": _iso(row["last_auto_resume_at"]),
        "watchdogTriggered": bool(row["triggered"]),
        "mismatchNotionalUsd": row["notional"], "thresholdUsd": row["threshold"],
        "autoResumeHeldBackBy": list(row["resume_held_back_by"] or []) if paused else [],
        "autoResumeEarliestAt": _iso(row["resume_earliest_at"]) if paused else None,
    }


def read_state(store: TradingStore, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> ReconState:
    """The health fields and the cumulative counters, from one call of `recon_health_state` (one
    statement, so one snapshot) through `store`, either backend."""
    parts = store.call("recon_health_state", {
        "p_succeeded": CYCLE_SUCCEEDED, "p_failed": CYCLE_FAILED,
        "p_missing_from_exchange": MISSING_FROM_EXCHANGE, "p_missing_in_db": MISSING_IN_DB,
        "p_synthetic_exit": SYNTHETIC_EXIT, "p_applied": APPLIED, "p_paused": PAUSED,
        "p_watchdog_source": WATCHDOG_PAUSE_SOURCE, "p_alert_pending": ALERT_PENDING,
        "p_alert_given_up": ALERT_GIVEN_UP})
    accounts = [_account_health(row, stale_after_s) for row in parts["accounts"]]
    glob = parts["global"]
    profiles = [_profile_gate(row) for row in parts["profiles"]]
    cumulative = parts["cumulative"]
    breakdown = parts["breakdown"]
    alerts = parts["alerts"]
    for holder, key in [(a, ("account", a["account"], None)) for a in accounts] + \
            [(p, ("profile", p["account"], p["profileId"])) for p in profiles]:
        _attach_breakdown(holder, key, breakdown, alerts)
    finished = [a["lastRun"] for a in accounts if a["lastRun"]]
    health = {
        "reconciliationLoopHealthy": bool(accounts) and all(a["healthy"] for a in accounts),
        "reconciliationMismatchCount": sum(a["mismatchCount"] for a in accounts),
        # ISO-8601 strings in one zone (UTC) compare like the times they name.
        "reconciliationLastRun": max(finished) if finished else None,
        "reconciliationMissingFromExchange": sum(a["missingFromExchange"] for a in accounts),
        "reconciliationMissingInDb": sum(a["missingInDb"] for a in accounts),
        "reconciliationParityMismatchTrades": sum(a["parityMismatchTrades"] for a in accounts),
        "reconciliationParityQuarantinedTrades": glob["quarantined"],
        "reconciliationParityAutoClosedTrades": glob["auto_closed"],
        "reconciliationParityMaxMismatchNotionalUsd": max(
            (a["parityMaxMismatchNotionalUsd"] for a in accounts), default=0.0),
        "reconciliationParityTotalMismatchNotionalUsd": sum(
            a["parityTotalMismatchNotionalUsd"] for a in accounts),
        "reconciliationIntegrityWatchdogTriggered": bool(glob["watchdog"]),
        "reconciliationUnchargedDriftUsd": round(sum(a["unchargedDriftUsd"] for a in accounts), 2),
        "reconciliationUnchargedDriftAccounts": sorted(a["account"] for a in accounts
                                                       if a["unchargedDriftUsd"] > 0),
        "accounts": accounts,
        "profiles": profiles,
        "staleAfterSeconds": stale_after_s,
        "checkedAt": _iso(glob["checked_at"]),
    }
    if not accounts:
        health["reason"] = "no exchange account to reconcile (no profiles and no cycles)"
    return ReconState(health=health, cumulative={
        "mismatch": cumulative["mismatch"],
        "missing_from_exchange": cumulative["missing_from_exchange"],
        "missing_in_db": cumulative["missing_in_db"],
        "lock_contention": cumulative["lock_contention"],
    }, breakdown=[dict(r) for r in breakdown], alerts=[dict(r) for r in alerts])


def _attach_breakdown(holder: dict, key: tuple, breakdown: list[dict], alerts: list[dict]) -> None:
    """An account's (all its findings) or a profile's (its own) mismatch counts by kind, notional
    at risk (USD, cents) and alerts, from the latest succeeded cycle."""
    level, account, profile = key

    def mine(row: dict) -> bool:
        return row["account"] == account and (level == "account" or row["profile_id"] == profile)

    rows = [r for r in breakdown if mine(r)]
    by_kind: dict[str, int] = {}
    for r in rows:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0) + int(r["findings"])
    holder["mismatchesByKind"] = by_kind
    holder["notionalAtRiskUsd"] = round(sum(r["notional_usd"] for r in rows), 2)
    raised = [r for r in alerts if mine(r)]
    holder["alertsLastDay"] = sum(int(r["last_day"]) for r in raised)
    holder["alertsUndelivered"] = sum(int(r["undelivered"]) for r in raised)


def load_state(source: "str | TradingStore", stale_after_s: float = DEFAULT_STALE_AFTER_S,
               connect_timeout_s: int = 5, statement_timeout_ms: int = 10_000) -> ReconState:
    """Read the state through `source`: a trading-database store (either backend), or a
    Postgres DSN (a `PostgresStore` with the health server's short timeouts). Raises
    `HealthUnavailable` (never with a password, user or key) when it cannot be read."""
    store = source if isinstance(source, TradingStore) else PostgresStore(
        dsn=source, connect_timeout_s=connect_timeout_s,
        statement_timeout_ms=statement_timeout_ms)
    try:
        return read_state(store, stale_after_s)
    except DatabaseUnavailable as exc:
        raise HealthUnavailable(str(exc)) from None
    except psycopg.Error as exc:
        raise HealthUnavailable(
            f"cannot read the reconciliation state from {store.describe()}: "
            f"{connection_failure(store.dsn, exc).reason}") from None
    except SupabaseStoreError as exc:  # already names the host and never the key
        raise HealthUnavailable(f"cannot read the reconciliation state: {exc}") from None


def unavailable_health(error: str, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> dict[str, Any]:
    """The /internal/health body when the state cannot be read: unhealthy, unknown numbers."""
    body: dict[str, Any] = {name: None for name in RUNBOOK_FIELDS}
    body["reconciliationLoopHealthy"] = False
    body["error"] = error
    body["staleAfterSeconds"] = stale_after_s
    return body
