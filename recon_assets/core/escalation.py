"""When to escalate, as the runbook says: mismatches still present after two reconciliation
runs, lock contention that keeps the loop from running, and unknown fills the exchange reports;
plus failed cycles (the loop itself not running), corrections refused or failed, failed
correction runs, and reconciling states a dead run left behind.

Each function turns rows read from the `recon` schema into alerts with a deterministic dedup key,
so an alert is raised once per situation however often the sensor evaluates.
"""

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd

from recon_assets.core.rules import (ALERT_DELIVERED, ALERT_GIVEN_UP, ALERT_MAX_ATTEMPTS,
                                     ALERT_PENDING, ALERT_RETRY_FIRST_S, ALERT_RETRY_MAX_S,
                                     ESCALATION_PERSISTENCE_RUNS, RECONCILIATION_LOCK)

# What makes two findings in different cycles "the same mismatch".
MISMATCH_IDENTITY = ["kind", "profile_id", "exchange_account", "symbol", "client_order_id",
                     "exchange_order_id", "trade_id"]


@dataclass(frozen=True)
class Alert:
    dedup_key: str
    reason: str  # persistent_mismatch | lock_contention | unknown_fill | failed_cycle
    summary: str
    exchange_account: str | None = None
    profile_id: str | None = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryVerdict:
    """Where an alert's delivery stands after one attempt."""

    status: str  # rules.ALERT_DELIVERY_STATUSES
    next_attempt_at: datetime | None


def after_delivery_attempt(attempts: int, delivered: bool, now: datetime,
                           max_attempts: int = ALERT_MAX_ATTEMPTS) -> DeliveryVerdict:
    """After attempt number `attempts` (1 for the first post): delivered (the webhook answered
    2xx), else pending with the next attempt 30 s, 60 s, 120 s, ... (at most an hour) later, or
    given up after `max_attempts`."""
    if delivered:
        return DeliveryVerdict(ALERT_DELIVERED, None)
    if attempts >= max_attempts:
        return DeliveryVerdict(ALERT_GIVEN_UP, None)
    wait = min(ALERT_RETRY_MAX_S, ALERT_RETRY_FIRST_S * 2 ** (attempts - 1))
    return DeliveryVerdict(ALERT_PENDING, now + timedelta(seconds=wait))


def persistent_mismatches(mismatches: pd.DataFrame, cycles: pd.DataFrame,
                          runs: int = ESCALATION_PERSISTENCE_RUNS,
                          last_clean: dict[str, str] | None = None) -> list[Alert]:
    """Mismatches found in each of an account's last `runs` succeeded cycles.

    `cycles`: cycle_id, exchange_account, finished_at (succeeded cycles only).
    `mismatches`: rows of recon.mismatches for those cycles (MISMATCH_IDENTITY + cycle_id).
    `last_clean`: account -> its latest succeeded cycle with no finding (where the current
    episode of drift began).

    One alert per account, episode and set of (profiles, kinds): the alert names them; the same
    set persisting, or another order of the same profile and kind joining it, is not news; a
    profile or a kind that joins or leaves the set is a new alert, and so is the same set in a
    new episode (after a clean cycle).
    """
    alerts: list[Alert] = []
    if cycles.empty or mismatches.empty:
        return alerts
    for account, account_cycles in cycles.groupby("exchange_account", sort=True):
        last = account_cycles.sort_values("finished_at").tail(runs)
        if len(last) < runs:
            continue
        rows = mismatches[mismatches["cycle_id"].isin(set(last["cycle_id"]))
                          & (mismatches["exchange_account"] == account)]
        keyed = rows.assign(identity=_identities(rows))
        seen_in = keyed.groupby("identity")["cycle_id"].nunique()
        persistent = keyed[keyed["identity"].isin(seen_in[seen_in == runs].index)]
        persistent = persistent.drop_duplicates("identity").sort_values("identity")
        if persistent.empty:
            continue
        by_kind = persistent["kind"].value_counts().sort_index().to_dict()
        profiles = sorted(persistent["profile_id"].dropna().unique().tolist())
        situation = json.dumps([profiles, sorted(by_kind), (last_clean or {}).get(account)])
        episode = hashlib.sha256(situation.encode()).hexdigest()[:16]
        alerts.append(Alert(
            dedup_key=f"persistent_mismatch:{account}:{episode}",
            reason="persistent_mismatch",
            exchange_account=account,
            summary=(f"{len(persistent)} mismatch(es) on {account} still present after {runs} "
                     f"reconciliation runs; profiles "
                     f"{', '.join(sorted(persistent['profile_id'].dropna().unique())) or 'none'}; "
                     f"{', '.join(f'{k}: {v}' for k, v in by_kind.items())}"),
            details={"cycles": list(last["cycle_id"]), "by_kind": by_kind,
                     "profiles": sorted(persistent["profile_id"].dropna().unique().tolist()),
                     "notional_usd": float(persistent["notional_usd"].sum())
                     if "notional_usd" in persistent else 0.0},
        ))
    return alerts


def _identities(rows: pd.DataFrame) -> list[str]:
    """Each row's MISMATCH_IDENTITY as one string (null as empty); a list, so zero rows work."""
    columns = [rows[c].tolist() for c in MISMATCH_IDENTITY]
    return ["|".join("" if pd.isna(v) else str(v) for v in values) for values in zip(*columns)]


def lock_contention(events: pd.DataFrame) -> list[Alert]:
    """One alert per recorded contention event (id, profile_id, cycle_id, waited_ms, and
    lock_kind / lock_object when known), saying which lock was busy: the profile's
    reconciliation lock (another reconciler) or a row lock (the trading app or another writer)."""
    alerts = []
    for row in events.itertuples():
        kind = getattr(row, "lock_kind", None) or RECONCILIATION_LOCK
        what = getattr(row, "lock_object", None)
        lock = (f"reconciliation lock for profile {row.profile_id}" if kind == RECONCILIATION_LOCK
                else f"a row lock on {what or 'a trading table'} (held by the trading app or "
                     f"another writer) for profile {row.profile_id}")
        alerts.append(Alert(
            dedup_key=f"lock_contention:{row.id}", reason="lock_contention",
            profile_id=row.profile_id,
            summary=(f"{lock[0].upper()}{lock[1:]} was busy for {row.waited_ms} ms; cycle "
                     f"{row.cycle_id} could not correct it"),
            details={"cycle_id": row.cycle_id, "waited_ms": int(row.waited_ms),
                     "lock_kind": kind, "lock_object": what}))
    return alerts


def refused_corrections(rows: pd.DataFrame) -> list[Alert]:
    """One alert per correction a check refused or an error stopped (recon.corrections rows with
    outcome refused/failed: id, cycle_id, profile_id, handler, client_order_id, outcome, reason,
    error)."""
    return [Alert(dedup_key=f"correction_refused:{row.id}", reason="correction_refused",
                  profile_id=row.profile_id,
                  summary=(f"{row.handler} for order {row.client_order_id} of profile "
                           f"{row.profile_id} was {row.outcome} ({row.reason}): "
                           f"{str(row.error or '')[:300]}"),
                  details={"cycle_id": row.cycle_id, "correction_id": int(row.id),
                           "handler": row.handler, "client_order_id": row.client_order_id,
                           "outcome": row.outcome, "reason": row.reason})
            for row in rows.itertuples()]


def failed_correction_run(run_id: str, profile_id: str | None, message: str) -> Alert:
    """A lifecycle correction run that failed as a whole (its orders were not all tried)."""
    return Alert(dedup_key=f"failed_correction_run:{run_id}", reason="failed_correction_run",
                 profile_id=profile_id,
                 summary=(f"correction run {run_id} for profile {profile_id or '?'} failed: "
                          f"{(message or 'no error recorded').splitlines()[0][:300]}"),
                 details={"run_id": run_id})


def stale_reconciling(account: str, profile_id: str, owner: str | None, why: str,
                      cycle_id: str) -> Alert:
    """A profile left `reconciling` by a run that is gone, restored to trading by a cycle."""
    return Alert(dedup_key=f"stale_reconciling:{profile_id}:{owner}", reason="stale_reconciling",
                 exchange_account=account, profile_id=profile_id,
                 summary=(f"profile {profile_id} was left reconciling by run {owner or '?'} "
                          f"({why}); cycle {cycle_id} restored trading"),
                 details={"owner": owner, "why": why, "cycle_id": cycle_id})


def watchdog_pause(account: str, profile_id: str, reason: str, cycle_id: str,
                   notional_usd: float, threshold_usd: float) -> Alert:
    """The integrity watchdog paused a profile (one alert per pause: the cycle that paused it)."""
    return Alert(dedup_key=f"watchdog_pause:{profile_id}:{cycle_id}", reason="watchdog_pause",
                 exchange_account=account, profile_id=profile_id,
                 summary=(f"integrity watchdog paused profile {profile_id} on {account}: {reason}; "
                          "no synthetic exit for it this cycle"),
                 details={"cycle_id": cycle_id, "mismatch_notional_usd": round(notional_usd, 2),
                          "threshold_usd": round(threshold_usd, 2)})


def auto_resumed(account: str, profile_id: str, resumed_at: str, cycle_id: str,
                 clean_cycles: list[str]) -> Alert:
    """The auto-resume rule resumed a profile the watchdog had paused."""
    return Alert(dedup_key=f"auto_resume:{profile_id}:{resumed_at}", reason="auto_resume",
                 exchange_account=account, profile_id=profile_id,
                 summary=(f"profile {profile_id} on {account} auto-resumed after "
                          f"{len(clean_cycles)} clean cycle(s): {', '.join(clean_cycles)}"),
                 details={"cycle_id": cycle_id, "clean_cycles": clean_cycles,
                          "resumed_at": resumed_at})


def unknown_fills(fills: pd.DataFrame, known_order_ids: set[str], account: str) -> list[Alert]:
    """Exchange fills of `account` tied to no order the database knows (by exchange order id or
    client order id): activity nobody recorded."""
    if fills.empty:
        return []
    known = fills["exchange_order_id"].astype(str).isin(known_order_ids) | \
        fills["client_order_id"].astype(str).isin(known_order_ids)
    unknown = fills[~known].sort_values("exchange_fill_id")
    if unknown.empty:
        return []
    ids = unknown["exchange_fill_id"].astype(str).tolist()
    # The set itself (fill ids are unique per symbol only), so two different sets never share
    # a key, whatever their sizes and last ids.
    fills_set = sorted(f"{symbol}|{fill}" for symbol, fill in zip(unknown["symbol"], ids))
    digest = hashlib.sha256("\n".join(fills_set).encode()).hexdigest()[:24]
    return [Alert(
        dedup_key=f"unknown_fill:{account}:{digest}",
        reason="unknown_fill", exchange_account=account,
        summary=f"{len(ids)} exchange fill(s) on {account} match no order in the database",
        details={"exchange_fill_ids": ids[:50], "symbols": sorted(unknown["symbol"].unique().tolist()),
                 "notional_usd": float(unknown["notional_usd"].sum())})]


def failed_cycles(cycles: pd.DataFrame) -> list[Alert]:
    """One alert per failed cycle (cycle_id, exchange_account, error): the loop did not run."""
    return [Alert(dedup_key=f"failed_cycle:{row.exchange_account}:{row.cycle_id}",
                  reason="failed_cycle", exchange_account=row.exchange_account,
                  summary=(f"reconciliation cycle {row.cycle_id} on {row.exchange_account} failed: "
                           f"{str(row.error or 'no error recorded').splitlines()[0][:300]}"),
                  details={"cycle_id": row.cycle_id})
            for row in cycles.itertuples()]


def quarantine_released(account: str, profile_id: str, trade_id: str, slice_no: int,
                        why: str, by: str) -> Alert:
    """A quarantine ended: by the heartbeat (the slice supported for the confirmation count in a
    row, or closed) or by an operator; `why` says which."""
    return Alert(dedup_key=f"quarantine_released:{profile_id}:{trade_id}:{slice_no}:{by}",
                 reason="quarantine_released", exchange_account=account, profile_id=profile_id,
                 summary=(f"quarantine of slice {slice_no} of trade {trade_id} ({profile_id}) "
                          f"released by {by}: {why}"),
                 details={"trade_id": trade_id, "slice_no": slice_no, "why": why, "by": by})


def uncharged_drift(account: str, cycle_id: str, drifts: list[dict]) -> Alert:
    """Position drift on the account that no profile could be charged with: raised every cycle
    it persists (the watchdog cannot pause anyone for it)."""
    total = sum(float(d.get("notional_usd") or 0.0) for d in drifts)
    return Alert(dedup_key=f"uncharged_drift:{account}:{cycle_id}", reason="uncharged_drift",
                 exchange_account=account,
                 summary=(f"{len(drifts)} position drift(s) on {account} worth {total:.2f} USD "
                          "are charged to no profile (no order, fill or database position "
                          "points at one): "
                          + "; ".join(str(d.get("reason")) for d in drifts)),
                 details={"cycle_id": cycle_id, "notional_usd": round(total, 2),
                          "drifts": drifts})


def systemic(account: str, cycle_id: str, reason: str) -> Alert:
    """The account was judged systemic (a flat answer for several profiles' slices at once): its
    profiles are paused and nothing is closed."""
    return Alert(dedup_key=f"systemic:{account}:{cycle_id}", reason="systemic",
                 exchange_account=account, summary=f"{account}: {reason}",
                 details={"cycle_id": cycle_id})


def slack_payload(alert: Alert) -> dict:
    """A Slack-compatible webhook body (text plus blocks) for one alert."""
    title = {"persistent_mismatch": "Reconciliation mismatch persists",
             "lock_contention": "Reconciliation lock contention",
             "unknown_fill": "Unknown exchange fills",
             "failed_cycle": "Reconciliation cycle failed",
             "correction_refused": "Correction refused",
             "failed_correction_run": "Correction run failed",
             "stale_reconciling": "Stale reconciling state restored",
             "watchdog_pause": "Integrity watchdog paused trading",
             "auto_resume": "Trading auto-resumed",
             "quarantine_released": "Quarantine released",
             "uncharged_drift": "Position drift charged to no profile",
             "systemic": "Systemic exchange answer: account paused"}[alert.reason]
    where = " · ".join(x for x in (alert.exchange_account and f"account {alert.exchange_account}",
                                    alert.profile_id and f"profile {alert.profile_id}") if x)
    text = f":rotating_light: {title}: {alert.summary}"
    return {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": alert.summary}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": (
                f"{where or 'all accounts'} · reason `{alert.reason}` · escalate to the trading "
                "engineering lead (docs/operator-guide.md, When to escalate)")}]},
        ],
        "recon_alert": {"dedup_key": alert.dedup_key, "reason": alert.reason,
                        "exchange_account": alert.exchange_account,
                        "profile_id": alert.profile_id, "details": alert.details},
    }
