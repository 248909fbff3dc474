"""The runbook's health numbers, computed from the state persisted in the database.

Everything here is read from Postgres on each request (nothing is kept in memory), so the numbers
survive a restart of the metrics server and agree across replicas. One read-only REPEATABLE READ
transaction per request, so every number of one answer comes from the same moment.

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
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.rows import dict_row

from recon_assets.core.rules import (ALERT_GIVEN_UP, ALERT_PENDING, APPLIED, CYCLE_FAILED,
                                     CYCLE_SUCCEEDED, MISSING_FROM_EXCHANGE, MISSING_IN_DB, PAUSED,
                                     SYNTHETIC_EXIT, WATCHDOG_PAUSE_SOURCE)
from recon_assets.resources.database import (DatabaseUnavailable, connection_failure,
                                             open_connection, redact_dsn)

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
    # The latest succeeded cycles' findings per account, profile and kind (findings,
    # notional_usd), and the alerts per account, profile and reason (raised, last_day,
    # undelivered): the labelled /metrics series.
    breakdown: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)


_ACCOUNTS_SQL = f"""
WITH prof AS (SELECT DISTINCT exchange_account FROM public.profiles),
watched AS (
    SELECT exchange_account FROM prof
    UNION
    SELECT DISTINCT exchange_account FROM recon.cycles WHERE NOT EXISTS (SELECT 1 FROM prof)
),
last_finished AS (
    SELECT DISTINCT ON (c.exchange_account) c.exchange_account, c.cycle_id, c.status,
           c.finished_at, c.error
    FROM recon.cycles c JOIN watched USING (exchange_account)
    WHERE c.status IN ('{CYCLE_SUCCEEDED}', '{CYCLE_FAILED}')
    ORDER BY c.exchange_account, c.finished_at DESC NULLS LAST, c.started_at DESC
),
last_success AS (
    SELECT DISTINCT ON (c.exchange_account) c.exchange_account, c.cycle_id, c.finished_at
    FROM recon.cycles c JOIN watched USING (exchange_account)
    WHERE c.status = '{CYCLE_SUCCEEDED}'
    ORDER BY c.exchange_account, c.finished_at DESC NULLS LAST, c.started_at DESC
)
SELECT w.exchange_account AS account,
       lf.cycle_id AS last_cycle_id, lf.status AS last_status, lf.finished_at AS last_finished_at,
       ls.cycle_id AS success_cycle_id, ls.finished_at AS success_finished_at,
       EXTRACT(EPOCH FROM (now() - ls.finished_at))::float8 AS success_age_s,
       COALESCE(m.mismatches, 0) AS mismatches,
       COALESCE(m.missing_from_exchange, 0) AS missing_from_exchange,
       COALESCE(m.missing_in_db, 0) AS missing_in_db,
       COALESCE(g.ghost_trades, 0) AS ghost_trades,
       COALESCE(g.ghost_max_usd, 0)::float8 AS ghost_max_usd,
       COALESCE(g.ghost_total_usd, 0)::float8 AS ghost_total_usd
FROM watched w
LEFT JOIN last_finished lf USING (exchange_account)
LEFT JOIN last_success ls USING (exchange_account)
LEFT JOIN LATERAL (
    SELECT count(*) AS mismatches,
           count(*) FILTER (WHERE kind = '{MISSING_FROM_EXCHANGE}') AS missing_from_exchange,
           count(*) FILTER (WHERE kind = '{MISSING_IN_DB}') AS missing_in_db
    FROM recon.mismatches mm
    WHERE mm.cycle_id = ls.cycle_id AND mm.exchange_account = ls.exchange_account
) m ON true
-- The parity heartbeat's ghosts of that same cycle (none while the heartbeat is off).
LEFT JOIN LATERAL (
    SELECT count(DISTINCT (profile_id, trade_id)) AS ghost_trades,
           max(mismatch_notional_usd) AS ghost_max_usd,
           sum(mismatch_notional_usd) AS ghost_total_usd
    FROM recon.parity_checks pc
    WHERE pc.cycle_id = ls.cycle_id AND pc.exchange_account = ls.exchange_account AND pc.ghost
) g ON true
ORDER BY w.exchange_account
"""

_GLOBAL_SQL = f"""
SELECT now() AS checked_at,
       (SELECT count(*) FROM recon.quarantine WHERE released_at IS NULL) AS quarantined,
       (SELECT count(*) FROM recon.corrections
         WHERE handler = '{SYNTHETIC_EXIT}' AND outcome = '{APPLIED}' AND NOT dry_run)
           AS auto_closed,
       EXISTS (SELECT 1 FROM public.profiles
                WHERE trading_state = '{PAUSED}' AND pause_source = '{WATCHDOG_PAUSE_SOURCE}')
           AS watchdog
"""

_PROFILES_SQL = f"""
SELECT p.id, p.exchange_account, p.trading_state, p.pause_source, p.paused_at,
       p.last_auto_resume_at, w.mismatch_notional_usd::float8 AS notional,
       w.threshold_usd::float8 AS threshold, w.resume_held_back_by, w.resume_earliest_at,
       p.trading_state = '{PAUSED}' AND p.pause_source = '{WATCHDOG_PAUSE_SOURCE}' AS triggered
FROM public.profiles p LEFT JOIN recon.watchdog_state w ON w.profile_id = p.id
ORDER BY p.exchange_account, p.id
"""

# The findings of each account's latest succeeded cycle, per profile (none for account-level
# findings such as foreign orders or position drift) and kind, with the notional at stake.
_BREAKDOWN_SQL = f"""
WITH last_success AS (
    SELECT DISTINCT ON (exchange_account) exchange_account, cycle_id
    FROM recon.cycles WHERE status = '{CYCLE_SUCCEEDED}'
    ORDER BY exchange_account, finished_at DESC NULLS LAST, started_at DESC
)
SELECT m.exchange_account AS account, m.profile_id, m.kind, count(*) AS findings,
       round(COALESCE(sum(m.notional_usd), 0), 2)::float8 AS notional_usd
FROM recon.mismatches m JOIN last_success ls
  ON ls.cycle_id = m.cycle_id AND ls.exchange_account = m.exchange_account
GROUP BY m.exchange_account, m.profile_id, m.kind
ORDER BY 1, 2 NULLS FIRST, 3
"""

# Alerts per account and profile: raised in the last day, and not delivered (still retrying, or
# given up); and per reason, all time (the Prometheus counter).
_ALERTS_SQL = f"""
SELECT exchange_account AS account, profile_id, reason,
       count(*) AS raised,
       count(*) FILTER (WHERE raised_at > now() - interval '1 day') AS last_day,
       count(*) FILTER (WHERE delivery_status IN ('{ALERT_PENDING}', '{ALERT_GIVEN_UP}'))
           AS undelivered
FROM recon.alerts GROUP BY 1, 2, 3 ORDER BY 1 NULLS FIRST, 2 NULLS FIRST, 3
"""

_CUMULATIVE_SQL = f"""
SELECT count(*) AS mismatch,
       count(*) FILTER (WHERE kind = '{MISSING_FROM_EXCHANGE}') AS missing_from_exchange,
       count(*) FILTER (WHERE kind = '{MISSING_IN_DB}') AS missing_in_db,
       (SELECT count(*) FROM recon.lock_contention) AS lock_contention
FROM recon.mismatches
"""


def _iso(value: datetime | None) -> str | None:
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


def read_state(conn: psycopg.Connection, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> ReconState:
    """The health fields and the cumulative counters, read through `conn` (dict rows, inside the
    caller's transaction)."""
    accounts = [_account_health(row, stale_after_s)
                for row in conn.execute(_ACCOUNTS_SQL).fetchall()]
    glob = conn.execute(_GLOBAL_SQL).fetchone()
    profiles = [_profile_gate(row) for row in conn.execute(_PROFILES_SQL).fetchall()]
    cumulative = conn.execute(_CUMULATIVE_SQL).fetchone()
    breakdown = conn.execute(_BREAKDOWN_SQL).fetchall()
    alerts = conn.execute(_ALERTS_SQL).fetchall()
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


def load_state(dsn: str, stale_after_s: float = DEFAULT_STALE_AFTER_S,
               connect_timeout_s: int = 5, statement_timeout_ms: int = 10_000) -> ReconState:
    """Read the state in one read-only REPEATABLE READ transaction; raises `HealthUnavailable`
    (never with the DSN's user or password) when the database cannot be read."""
    try:
        with open_connection(dsn, row_factory=dict_row, connect_timeout=connect_timeout_s,
                             application_name="recon-health",
                             options=f"-c statement_timeout={statement_timeout_ms}") as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            return read_state(conn, stale_after_s)
    except DatabaseUnavailable as exc:
        raise HealthUnavailable(str(exc)) from None
    except psycopg.Error as exc:
        raise HealthUnavailable(
            f"cannot read the reconciliation state from {redact_dsn(dsn)}: "
            f"{connection_failure(dsn, exc).reason}") from None


def unavailable_health(error: str, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> dict[str, Any]:
    """The /internal/health body when the state cannot be read: unhealthy, unknown numbers."""
    body: dict[str, Any] = {name: None for name in RUNBOOK_FIELDS}
    body["reconciliationLoopHealthy"] = False
    body["error"] = error
    body["staleAfterSeconds"] = stale_after_s
    return body
