"""Lifecycle corrections, decided from evidence: pure logic (no I/O, no Dagster import).

The runbook routes mismatches through three lifecycle-safe handlers, ``reconcileEntryFill``,
``reconcileExitFill`` and ``reconcileCancel``. Here they are called ``reconcile_entry_fill``,
``reconcile_exit_fill`` and ``reconcile_cancel``, and they are applied by the SQL functions
``recon_reconcile_entry_fill`` / ``recon_reconcile_exit_fill`` / ``recon_reconcile_cancel`` in
``db/functions/`` (through psycopg or supabase-py's ``rpc()``, which call the same functions). This
module decides *which* handler, with which arguments and which idempotency key.

Rules
-----
**An order the diff found ``missing_from_exchange``** (open in the database, absent from the
exchange's open orders) is decided from ONE targeted probe of that order (ccxt ``fetch_order``,
plus the fills of that order, e.g. ``fetch_my_trades`` filtered by order id):

- The probe failed (network error, timeout, 429, 5xx, anything but "not found"): decide nothing
  (``none``, reason ``probe_network_error`` / ``probe_failed``). A network error is never "not
  found".
- "Not found" decides nothing (``probe_not_found_without_full_history``) unless the caller checked
  the account's complete order and fill history since the order was created
  (``ProbeFailure(kind="not_found", full_history=True)``): then an order with nothing booked is
  cancelled (``reconcile_cancel``, reason ``not_found_with_full_history``); one with fills booked
  in the database is left to an operator (``not_found_but_database_booked_fills``).
- The probe names another order (client order id or exchange id differs): ``none``
  (``probe_mismatch``).
- Exchange status ``open``: ``none`` (``exchange_reports_open``): the open-orders snapshot raced
  the order; the next cycle looks again.
- ``closed`` / ``canceled`` / ``expired`` with more filled than the database booked: the fill
  handler for the order's intent (``reconcile_entry_fill`` for ENTRY, ``reconcile_exit_fill`` for
  EXIT), with the exchange's cumulative ``filled`` and ``average`` and ALL the order's fills; the
  final status is ``filled`` when fully filled, else the exchange's ``canceled``/``expired``.
  Evidence first: the fills must be there (``fills_missing``), add up to ``filled``
  (``fills_do_not_add_up``), belong to the order (``fill_of_another_order``), have the order's
  side (``fill_side_mismatch``) and distinct ids (``duplicate_fill_ids``); otherwise ``none``.
- ``closed`` with less than the order qty filled is contradictory: ``none``
  (``closed_but_not_fully_filled``). ``closed`` with exactly what the database booked: the fill
  handler, which then only sets the status.
- ``canceled`` / ``expired`` / ``rejected`` with exactly what the database booked filled:
  ``reconcile_cancel`` with that final status (the SQL side checks the filled qty again).
- The exchange reports less filled than the database booked (``exchange_filled_less_than_database``)
  or more than the order qty (``exchange_filled_exceeds_order_qty``), a rejected order with fills,
  a status ccxt does not define, or a probe without ``filled``: ``none``, for an operator.

**An exchange order ``missing_in_db``** (on the exchange, not in the database):

- attributable (its client order id has our format, ``rc.<sub_tag>.<trade>.<E|X><n>``, and the
  sub tag is a profile of this account): NOT adopted automatically. Adopting would invent an
  orders row, and maybe a trade, that the trading app never decided on, so it is flagged for the
  operator: ``none`` with reason ``attributable_missing_in_db_flagged`` (with the profile and
  trade it points at). ``recon.corrections`` reserves the handler name ``adopt_order`` for an
  operator-approved adoption.
- foreign (any other id, or a sub tag of no profile of the account): only reported,
  ``foreign_order_reported``; it is not ours to touch.

Idempotency keys
----------------
Deterministic: ``<handler>:<profile>:<client_order_id>:<digest>``, where the digest is the first
128 bits of sha256 over an unambiguous JSON encoding of (version, handler, profile, trade, client
order id, sorted distinct fill ids, qualifier). The qualifier is the exchange's final state
(cumulative filled qty, normalised, and status), so the same evidence always yields the same key
(fill order and number formatting do not matter), a later, different state of the same order
(more fills) yields a new key, and keys of different handlers or orders never collide (the
readable prefix is informational; uniqueness comes from the digest). The cycle id is NOT part
of the key: a re-run in another cycle must find the correction already applied. Dry runs are
recorded by the SQL side under ``<key>:dry-run`` (see db/functions/recon._run_correction.sql), so a dry run never blocks
the real correction and ``:dry-run`` never ends a key made here.

The reconciliation lock
-----------------------
``profile_lock_key(profile_id)`` is the bigint key of the profile's advisory lock, the same
derivation as the SQL function ``recon_profile_lock_key``: the first 8 bytes, big-endian, signed,
of ``sha256(utf8("recon:profile:" + profile_id))``. ``pg_locks_ids`` gives the (classid, objid)
under which pg_locks shows it, for monitoring lock contention.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from recon_assets.core.attribution import parse_client_order_id
from recon_assets.core.fees import Fee, fee_of
from recon_assets.core.rules import (FAILED, INTENTS, LIFECYCLE_HANDLERS,
                                     ORDER_QUERY_RETENTION_DAYS, ORDER_SIDES,
                                     RECONCILIATION_LOCK, REFUSAL_BACKOFF_BASE_SECONDS,
                                     REFUSAL_BACKOFF_MAX_SECONDS, REFUSED, ROW_LOCK, SQL_REFUSAL,
                                     UNFILLED_ORDER_QUERY_RETENTION_DAYS)

ENTRY_FILL, EXIT_FILL, CANCEL = HANDLERS = LIFECYCLE_HANDLERS
NONE = "none"
SQL_FUNCTIONS = {
    ENTRY_FILL: "recon_reconcile_entry_fill",
    EXIT_FILL: "recon_reconcile_exit_fill",
    CANCEL: "recon_reconcile_cancel",
}
RUNBOOK_NAMES = {
    ENTRY_FILL: "reconcileEntryFill",
    EXIT_FILL: "reconcileExitFill",
    CANCEL: "reconcileCancel",
}
DRY_RUN_SUFFIX = ":dry-run"
LOCK_KEY_PREFIX = "recon:profile:"
KEY_VERSION = "recon-correction/v1"
# Parameters of the SQL functions whose type is jsonb.
JSONB_PARAMS = frozenset({"p_fills", "p_evidence"})

# ccxt's terminal order statuses (ccxt says "closed" where the database says "filled").
_TERMINAL = ("closed", "canceled", "expired", "rejected")
_QTY_TOLERANCE = Decimal("1e-9")


# --- the reconciliation lock -----------------------------------------------------------------

def profile_lock_key(profile_id: str) -> int:
    """The advisory-lock key of a profile (= SQL ``recon_profile_lock_key(profile_id)``)."""
    if not isinstance(profile_id, str) or not profile_id:
        raise ValueError(f"a profile id is a non-empty string, not {profile_id!r}")
    digest = hashlib.sha256((LOCK_KEY_PREFIX + profile_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def pg_locks_ids(key: int) -> tuple[int, int]:
    """(classid, objid) of a bigint advisory lock as pg_locks shows it (objsubid is 1)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


# --- idempotency keys ------------------------------------------------------------------------

def idempotency_key(handler: str, profile_id: str, trade_id: str | None, client_order_id: str,
                    fill_ids: Sequence[str] = (), qualifier: str = "") -> str:
    """The deterministic idempotency key of a correction (see the module docstring)."""
    if handler not in SQL_FUNCTIONS:
        raise ValueError(f"unknown handler {handler!r}; expected one of {', '.join(HANDLERS)}")
    ids = sorted({str(f) for f in fill_ids})
    payload = json.dumps(
        [KEY_VERSION, handler, profile_id, trade_id, client_order_id, ids, qualifier],
        ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]
    return f"{handler}:{profile_id}:{client_order_id}:{digest}"


# --- the decision ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeFailure:
    """The targeted probe did not answer with the order.

    kind: ``network_error`` (timeouts, 429, 5xx, dropped connections, bad JSON), ``not_found``
    (the exchange says no such order) or ``error`` (anything else). ``full_history`` is only
    meaningful for ``not_found``: the caller checked the account's complete order and fill
    history covering the order's lifetime, and it is not there either.
    """

    kind: str
    message: str = ""
    full_history: bool = False
    # For not_found: the order is older than what the exchange lets one query
    # (`beyond_query_retention`), so "not found" says nothing about it.
    beyond_retention: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("network_error", "not_found", "error"):
            raise ValueError(f"ProbeFailure.kind must be network_error, not_found or error, "
                             f"not {self.kind!r}")

    @classmethod
    def from_exception(cls, exc: BaseException, full_history: bool = False) -> ProbeFailure:
        """Classify an exception from the probe (ccxt's classes by name, so no ccxt import)."""
        names = {c.__name__ for c in type(exc).__mro__}
        if "OrderNotFound" in names:
            kind = "not_found"
        elif names & {"NetworkError", "RequestTimeout", "DDoSProtection", "RateLimitExceeded",
                      "ExchangeNotAvailable", "OnMaintenance", "InvalidNonce", "TimeoutError",
                      "ConnectionError", "JSONDecodeError"}:
            kind = "network_error"
        else:
            kind = "error"
        return cls(kind, f"{type(exc).__name__}: {exc}", full_history and kind == "not_found")


def beyond_query_retention(created_at_ms: int, now_ms: int, database_filled: Decimal | float) -> bool:
    """Whether the exchange may no longer answer for an order created at `created_at_ms`: past
    the query retention of any order, or past that of an order cancelled without fills (which
    it may be: the database booked none)."""
    age_days = (now_ms - created_at_ms) / 86_400_000
    return age_days > ORDER_QUERY_RETENTION_DAYS or (
        age_days > UNFILLED_ORDER_QUERY_RETENTION_DAYS and Decimal(str(database_filled)) == 0)


@dataclass(frozen=True)
class CorrectionDecision:
    """What to do about one order: a handler with its SQL arguments, or ``none`` and why."""

    handler: str  # reconcile_entry_fill | reconcile_exit_fill | reconcile_cancel | none
    reason: str  # a stable code (see the module docstring)
    profile_id: str | None = None
    trade_id: str | None = None
    client_order_id: str | None = None
    idempotency_key: str | None = None
    # Named arguments of sql_function, JSON-safe (numbers as exact decimal strings), ready for
    # PostgresStore.call / supabase-py rpc(); sql_call() turns them into a psycopg query.
    params: Mapping[str, Any] = field(default_factory=dict)
    detail: str = ""  # human-readable context for the operator

    @property
    def actionable(self) -> bool:
        return self.handler != NONE

    @property
    def sql_function(self) -> str | None:
        return SQL_FUNCTIONS.get(self.handler)

    @property
    def runbook_name(self) -> str | None:
        return RUNBOOK_NAMES.get(self.handler)


def sql_call(decision: CorrectionDecision) -> tuple[str, dict[str, Any]]:
    """(query, params) that apply `decision` with psycopg: ``SELECT public.<fn>(p => ...)``.

    jsonb arguments are passed as JSON text, the rest as untyped literals that Postgres casts to
    the declared argument types (numbers travel as exact decimal strings). The query
    returns one column, ``result`` (jsonb). `PostgresStore.call` / supabase-py ``rpc()`` take
    ``decision.sql_function`` and ``decision.params`` directly instead.
    """
    if not decision.actionable:
        raise ValueError(f"decision {decision.reason!r} applies nothing")
    names = list(decision.params)
    args = ", ".join(
        f"{name} => %({name})s::jsonb" if name in JSONB_PARAMS else f"{name} => %({name})s"
        for name in names)
    params = {name: json.dumps(value) if name in JSONB_PARAMS else value
              for name, value in decision.params.items()}
    return f"SELECT public.{decision.sql_function}({args}) AS result", params


def decide_missing_from_exchange(
    order: Mapping[str, Any],
    probe: Mapping[str, Any] | ProbeFailure,
    fills: Sequence[Mapping[str, Any]] | None = None,
    *,
    cycle_id: str,
    dry_run: bool = False,
    evidence: Mapping[str, Any] | None = None,
    fee_prices: Mapping[str, Any] | None = None,
) -> CorrectionDecision:
    """Decide the correction of a database order missing from the exchange's open orders.

    `order`: the database's order (a db_orders / mismatch row): profile_id, trade_id,
    client_order_id, intent (ENTRY/EXIT), side, qty, filled_qty, and optionally
    exchange_order_id, symbol, status. `probe`: the ccxt ``fetch_order`` result for it, or a
    `ProbeFailure`. `fills`: the order's fills (ccxt trades, or exchange_fills rows); defaults
    to ``probe["trades"]``. `evidence`: extra context recorded with the correction (snapshot
    ids, ...). `fee_prices`: by fill id, the USD price of a non-USD fee asset at the fill's time
    (`core.fees`; a fee without one is booked as unknown). The cycle id only goes into the
    arguments, never into the key.
    """
    o = _OrderView.of(order)

    def none(reason: str, detail: str = "") -> CorrectionDecision:
        return CorrectionDecision(NONE, reason, o.profile_id, o.trade_id, o.client_order_id,
                                  detail=detail)

    if isinstance(probe, ProbeFailure):
        if probe.kind == "not_found" and probe.beyond_retention:
            return none("beyond_exchange_query_retention",
                        f"the exchange no longer answers for order {o.client_order_id} (created "
                        f"beyond its query retention: {ORDER_QUERY_RETENTION_DAYS} days, or "
                        f"{UNFILLED_ORDER_QUERY_RETENTION_DAYS} days when cancelled without a "
                        f"fill); an operator settles it from the exchange's own records")
        if probe.kind == "not_found" and probe.full_history:
            if o.filled > 0:
                return none("not_found_but_database_booked_fills",
                            f"the exchange has no order {o.client_order_id} in its full history, "
                            f"but the database booked {_num(o.filled)} filled")
            return _cancel(o, "canceled", Decimal(0), "not_found_with_full_history",
                           {"probe": {"failure": probe.kind, "message": probe.message,
                                      "full_history": True}},
                           cycle_id, dry_run, evidence)
        reason = {"network_error": "probe_network_error",
                  "not_found": "probe_not_found_without_full_history"}.get(probe.kind,
                                                                          "probe_failed")
        return none(reason, probe.message)

    if not isinstance(probe, Mapping):
        raise TypeError(f"probe must be a fetch_order result (a mapping) or a ProbeFailure, "
                        f"not {type(probe).__name__}")
    probe_coid = probe.get("clientOrderId")
    probe_id = probe.get("id")
    if probe_coid not in (None, "") and str(probe_coid) != o.client_order_id:
        return none("probe_mismatch", f"the probe answered for client order id {probe_coid}")
    # A conditional order (the Algo Service's) that triggered became a regular order: the
    # probe is that order, and `algoId` names the algo order the database holds.
    if (probe_id not in (None, "") and o.exchange_order_id is not None
            and str(probe_id) != o.exchange_order_id
            and str(probe.get("algoId") or "") != o.exchange_order_id):
        return none("probe_mismatch", f"the probe answered for exchange order {probe_id}, "
                                      f"the database has {o.exchange_order_id}")
    status = probe.get("status")
    if status == "open":
        return none("exchange_reports_open",
                    "the exchange still has the order open; the next cycle checks again")
    if status not in _TERMINAL:
        return none("unknown_probe_status", f"exchange status {status!r}")
    filled = _dec(probe.get("filled"))
    if filled is None or filled < 0:
        return none("incomplete_probe", f"the probe carries no usable filled qty "
                                        f"({probe.get('filled')!r})")
    if filled > o.qty:
        return none("exchange_filled_exceeds_order_qty",
                    f"exchange filled {_num(filled)} > order qty {_num(o.qty)}")
    if filled < o.filled:
        return none("exchange_filled_less_than_database",
                    f"exchange filled {_num(filled)} < database filled {_num(o.filled)}")
    if status == "rejected" and filled > 0:
        return none("inconsistent_probe", f"a rejected order with {_num(filled)} filled")
    exchange_order_id = str(probe_id) if probe_id not in (None, "") else o.exchange_order_id
    probe_evidence = {"probe": _probe_summary(probe)}
    # The fills of a triggered conditional order belong to the regular order it became; they are
    # booked under the order the database holds (the algo order), the evidence names both.
    booked_order_id = exchange_order_id
    if probe.get("algoId") not in (None, "") and str(probe["algoId"]) == o.exchange_order_id:
        booked_order_id = o.exchange_order_id
        probe_evidence["triggered_as_order"] = exchange_order_id

    if filled == o.filled and status != "closed":
        return _cancel(o, status, filled, f"exchange_{status}", probe_evidence, cycle_id,
                       dry_run, evidence, booked_order_id)
    if status == "closed" and filled != o.qty:
        return none("closed_but_not_fully_filled",
                    f"status closed with {_num(filled)} of {_num(o.qty)} filled")

    raw_fills = fills if fills is not None else (probe.get("trades") or [])
    normalised, problem = _normalise_fills(raw_fills, o, exchange_order_id, fee_prices or {})
    if problem:
        return none(*problem)
    if filled > o.filled and not normalised:
        return none("fills_missing", "evidence first: the order's fills are needed to book them")
    if normalised:
        total = sum((Decimal(f["qty"]) for f in normalised), Decimal(0))
        if abs(total - filled) > _QTY_TOLERANCE * max(filled, Decimal(1)):
            return none("fills_do_not_add_up",
                        f"fills add up to {_num(total)}, the exchange reports {_num(filled)}")
    average = _dec(probe.get("average"))
    if (average is None or average <= 0) and normalised:
        notional = sum((Decimal(f["qty"]) * Decimal(f["price"]) for f in normalised), Decimal(0))
        qty = sum((Decimal(f["qty"]) for f in normalised), Decimal(0))
        average = notional / qty if qty > 0 else None
    if average is None or average <= 0:
        if filled == o.filled and o.avg_fill_price is not None:
            average = o.avg_fill_price
        else:
            return none("incomplete_probe", "no average fill price in the probe or its fills")

    handler = ENTRY_FILL if o.intent == "ENTRY" else EXIT_FILL
    final_status = None if status == "closed" else status
    key = idempotency_key(handler, o.profile_id, o.trade_id, o.client_order_id,
                          [f["id"] for f in normalised],
                          f"filled={_num(filled)};status={status}")
    reason = f"exchange_{status}_{'fully' if filled == o.qty else 'partially'}_filled"
    params: dict[str, Any] = {
        "p_profile_id": o.profile_id,
        "p_cycle_id": cycle_id,
        "p_idempotency_key": key,
        "p_client_order_id": o.client_order_id,
        "p_filled_qty": _num(filled),
        "p_avg_fill_price": _num(average),
        "p_exchange_order_id": booked_order_id,
        "p_fills": normalised,
        "p_final_status": final_status,
        "p_dry_run": bool(dry_run),
        "p_evidence": _evidence(o, reason, {**probe_evidence, "fills": normalised}, evidence),
    }
    if handler == EXIT_FILL:
        params["p_close_reason"] = "reconciled_exit_fill"
    return CorrectionDecision(handler, reason, o.profile_id, o.trade_id, o.client_order_id, key,
                              params, detail=f"{RUNBOOK_NAMES[handler]} for "
                                             f"{o.client_order_id}: {_num(filled)} filled at "
                                             f"{_num(average)} ({status})")


def decide_missing_in_db(exchange_order: Mapping[str, Any],
                         profiles_by_sub_tag: Mapping[str, str]) -> CorrectionDecision:
    """The documented rule for an exchange order the database does not have: never adopted
    automatically; flagged for the operator when attributable, only reported when foreign."""
    coid = exchange_order.get("client_order_id", exchange_order.get("clientOrderId"))
    coid = None if _is_missing(coid) else str(coid)
    attribution = parse_client_order_id(coid)
    if attribution is not None and attribution.sub_tag in profiles_by_sub_tag:
        profile_id = profiles_by_sub_tag[attribution.sub_tag]
        return CorrectionDecision(
            NONE, "attributable_missing_in_db_flagged", profile_id, attribution.trade_id, coid,
            detail=(f"exchange order {coid} belongs to profile {profile_id}, trade "
                    f"{attribution.trade_id} ({attribution.intent}); not in the database: an "
                    "operator decides whether to adopt it"))
    return CorrectionDecision(
        NONE, "foreign_order_reported", None, None, coid,
        detail=f"exchange order {coid!r} is not attributable to a profile of this account")


# --- when a correction is not applied --------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """Why a correction was not applied: `refused` by a check (the decision's or the SQL
    handler's; an operator looks) or `failed` with an unexpected error. `reason` is a stable code
    (the SQL handler's RCREF detail where it gave one), `message` says it in words."""

    outcome: str  # refused | failed
    reason: str
    message: str


def refusal_of(exc: BaseException) -> Refusal:
    """Classify an exception from deciding or applying one order's correction (psycopg's errors
    by their SQLSTATE, so this module needs no psycopg import)."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:1000]
    if sqlstate == SQL_REFUSAL:
        detail = getattr(diag, "message_detail", None)
        return Refusal(REFUSED, detail or "refused_by_handler", message)
    if sqlstate == "P0001":  # RAISE EXCEPTION in a handler: an illegal transition, a bad request
        return Refusal(REFUSED, "refused_by_handler", message)
    if sqlstate and sqlstate.startswith("23"):  # a constraint that protects money
        return Refusal(REFUSED, "constraint_violated", message)
    if sqlstate is None and isinstance(exc, (ValueError, TypeError)):
        return Refusal(REFUSED, "bad_order_row", message)
    return Refusal(FAILED, "unexpected_error", f"{type(exc).__name__}: {message}")


def retry_after_refusals(refusals: int, last_refused_at: datetime | None) -> datetime | None:
    """When a profile whose last `refusals` lifecycle corrections in a row were refused (or
    failed) may be corrected again; None: now. One refusal is retried at the next cycle (a busy
    gate, a fill that arrived a moment late); from the second on the profile waits
    REFUSAL_BACKOFF_BASE_SECONDS after the last one, doubling with each further refusal up to
    REFUSAL_BACKOFF_MAX_SECONDS, so a correction the database keeps refusing is not hammered
    (and alerted) every minute."""
    if refusals < 2 or last_refused_at is None:
        return None
    wait = min(REFUSAL_BACKOFF_BASE_SECONDS * 2 ** min(refusals - 2, 32),
               REFUSAL_BACKOFF_MAX_SECONDS)
    return last_refused_at + timedelta(seconds=wait)


_RELATION = re.compile(r'in relation "([^"]+)"')


def lock_wait_of(context: str | None) -> tuple[str, str | None]:
    """Which lock a lock timeout waited for, from the error's CONTEXT: the profile's
    reconciliation lock (another reconciler) or a row lock (PostgreSQL names the relation:
    the trading app, or any writer, holding an order, profile or position row)."""
    text = context or ""
    if "pg_advisory" in text or "_lock_profile" in text:
        return RECONCILIATION_LOCK, "profile"
    match = _RELATION.search(text)
    return ROW_LOCK, match.group(1) if match else None


# --- helpers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _OrderView:
    profile_id: str
    trade_id: str
    client_order_id: str
    intent: str
    side: str
    qty: Decimal
    filled: Decimal
    exchange_order_id: str | None
    avg_fill_price: Decimal | None
    raw: Mapping[str, Any]

    @classmethod
    def of(cls, order: Mapping[str, Any]) -> _OrderView:
        missing = [k for k in ("profile_id", "trade_id", "client_order_id", "intent", "side",
                               "qty") if _is_missing(order.get(k))]
        if missing:
            raise ValueError(f"order {order.get('client_order_id')!r} lacks {', '.join(missing)}")
        intent = str(order["intent"])
        if intent not in INTENTS:
            raise ValueError(f"order {order['client_order_id']}: intent must be ENTRY or EXIT, "
                             f"not {intent!r}")
        side = str(order["side"])
        if side not in ORDER_SIDES:
            raise ValueError(f"order {order['client_order_id']}: side must be buy or sell, "
                             f"not {side!r}")
        qty = _dec(order["qty"])
        filled = _dec(order.get("filled_qty")) if not _is_missing(order.get("filled_qty")) \
            else Decimal(0)
        if qty is None or qty <= 0 or filled is None or filled < 0:
            raise ValueError(f"order {order['client_order_id']}: bad qty/filled_qty "
                             f"({order.get('qty')!r}, {order.get('filled_qty')!r})")
        exchange_id = order.get("exchange_order_id")
        avg = order.get("avg_fill_price")
        return cls(str(order["profile_id"]), str(order["trade_id"]),
                   str(order["client_order_id"]), intent, side, qty, filled,
                   None if _is_missing(exchange_id) else str(exchange_id),
                   None if _is_missing(avg) else _dec(avg), order)


def _cancel(o: _OrderView, status: str, filled: Decimal, reason: str,
            decision_evidence: Mapping[str, Any], cycle_id: str, dry_run: bool,
            evidence: Mapping[str, Any] | None,
            exchange_order_id: str | None = None) -> CorrectionDecision:
    key = idempotency_key(CANCEL, o.profile_id, o.trade_id, o.client_order_id, (),
                          f"filled={_num(filled)};status={status};rule={reason}")
    params = {
        "p_profile_id": o.profile_id,
        "p_cycle_id": cycle_id,
        "p_idempotency_key": key,
        "p_client_order_id": o.client_order_id,
        "p_exchange_order_id": exchange_order_id or o.exchange_order_id,
        "p_filled_qty": _num(filled),
        "p_final_status": status,
        "p_dry_run": bool(dry_run),
        "p_evidence": _evidence(o, reason, decision_evidence, evidence),
    }
    return CorrectionDecision(CANCEL, reason, o.profile_id, o.trade_id, o.client_order_id, key,
                              params, detail=f"reconcileCancel for {o.client_order_id}: "
                                             f"{status} with {_num(filled)} filled")


def _normalise_fills(fills: Sequence[Mapping[str, Any]], o: _OrderView,
                     exchange_order_id: str | None, fee_prices: Mapping[str, Any]
                     ) -> tuple[list[dict], tuple[str, str] | None]:
    """Fills as the SQL functions take them, sorted by id; or a (reason, detail) problem.
    `fee_prices`: by fill id, the USD price of the fee's asset at the fill's time."""
    out: dict[str, dict] = {}
    for fill in fills:
        fill_id = fill.get("id", fill.get("exchange_fill_id"))
        qty = _dec(fill.get("amount", fill.get("qty")))
        price = _dec(fill.get("price"))
        if _is_missing(fill_id) or qty is None or qty <= 0 or price is None or price < 0:
            return [], ("incomplete_fill", f"a fill lacks an id, a qty > 0 or a price: {fill!r}")
        fill_id = str(fill_id)
        if fill_id in out:
            return [], ("duplicate_fill_ids", f"fill {fill_id} appears twice")
        fill_order = fill.get("order", fill.get("exchange_order_id"))
        if (not _is_missing(fill_order) and exchange_order_id is not None
                and str(fill_order) != exchange_order_id):
            return [], ("fill_of_another_order",
                        f"fill {fill_id} belongs to exchange order {fill_order}")
        fill_coid = fill.get("client_order_id", fill.get("clientOrderId"))
        if not _is_missing(fill_coid) and str(fill_coid) != o.client_order_id:
            return [], ("fill_of_another_order",
                        f"fill {fill_id} belongs to client order id {fill_coid}")
        side = fill.get("side")
        if not _is_missing(side) and str(side) != o.side:
            return [], ("fill_side_mismatch", f"fill {fill_id} is a {side}, the order a {o.side}")
        normalised: dict[str, Any] = {"id": fill_id, "qty": _num(qty), "price": _num(price)}
        fee = _fee(fill, fee_prices.get(fill_id))
        if fee.asset is not None:
            normalised["fee_asset"] = fee.asset
        if fee.amount is not None:
            normalised["fee_amount"] = _num(fee.amount)
        if fee.usd is not None:
            normalised["fee_usd"] = _num(fee.usd)
        filled_at = _timestamp(fill)
        if filled_at is not None:
            normalised["filled_at"] = filled_at
        out[fill_id] = normalised
    return [out[k] for k in sorted(out)], None


def _fee(fill: Mapping[str, Any], asset_price_usd: Any) -> Fee:
    """The fill's fee: from a ccxt trade (`fee` {cost, currency}) priced at `asset_price_usd`, or
    from a stored exchange_fills row (fee_asset, fee_amount, fee_usd)."""
    fee = fill.get("fee")
    if isinstance(fee, Mapping):
        return fee_of(fee.get("cost"), fee.get("currency"), asset_price_usd)
    asset = None if _is_missing(fill.get("fee_asset")) else str(fill["fee_asset"])
    usd = None if _is_missing(fill.get("fee_usd")) else _dec(fill["fee_usd"])
    amount = None if _is_missing(fill.get("fee_amount")) else _dec(fill["fee_amount"])
    return Fee(asset, amount, usd)


def _timestamp(fill: Mapping[str, Any]) -> str | None:
    value = fill.get("filled_at", fill.get("timestamp"))
    if _is_missing(value):
        return None
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value) / 1000, tz=timezone.utc).isoformat()
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _probe_summary(probe: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("id", "clientOrderId", "symbol", "side", "status", "amount", "filled", "remaining",
            "average", "timestamp", "lastTradeTimestamp")
    return {k: _jsonable(probe.get(k)) for k in keys if k in probe}


def _evidence(o: _OrderView, rule: str, decision_evidence: Mapping[str, Any],
              extra: Mapping[str, Any] | None) -> dict[str, Any]:
    db_keys = ("profile_id", "exchange_account", "trade_id", "intent", "symbol", "side",
               "client_order_id", "exchange_order_id", "status", "qty", "filled_qty", "price",
               "avg_fill_price", "created_at", "updated_at")
    out = {k: _jsonable(v) for k, v in (extra or {}).items()}
    out.update({
        "decided_by": __name__,
        "rule": rule,
        "db_order": {k: _jsonable(o.raw.get(k)) for k in db_keys if k in o.raw},
        **{k: _jsonable(v) for k, v in decision_evidence.items()},
    })
    return out


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value == "":
        return True
    if type(value).__name__ in ("NAType", "NaTType"):
        return True
    # pandas NA / NaT compare unequal to themselves
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def _dec(value: Any) -> Decimal | None:
    """An exact Decimal from a number or numeric string (floats by their shortest repr)."""
    if _is_missing(value) or isinstance(value, bool):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes, Decimal)):
        value = value.item()  # numpy scalars
    try:
        result = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def _num(value: Decimal) -> str:
    """A Decimal as a plain, normalised string: 1, 1.0 and 1.00 all give '1'."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _jsonable(value: Any) -> Any:
    if _is_missing(value):
        return None
    if isinstance(value, Decimal):
        return _num(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    if isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
