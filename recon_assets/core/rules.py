"""The vocabulary of reconciliation, defined once: statuses, kinds, handlers, thresholds.

Everything else imports these names; nothing writes the lists again. The SQL side has the same
lists as CHECK constraints (migrations) and as `recon.open_order_statuses()`
(db/functions/recon.open_order_statuses.sql); `recon_assets_tests/db/test_rules_sql.py` reads them
from a live database and asserts they equal these, so editing one side alone fails the suite.
"""

from __future__ import annotations

# --- orders (public.orders) --------------------------------------------------------------------
# Every status the trading database uses, in the words of its CHECK constraint.
ORDER_STATUSES = ("new", "open", "partially_filled", "filled", "canceled", "rejected", "expired")
# An open order can still fill: a DB order in one of these that the exchange does not list as
# open is `missing_from_exchange`.
OPEN_ORDER_STATUSES = ("new", "open", "partially_filled")
TERMINAL_ORDER_STATUSES = tuple(s for s in ORDER_STATUSES if s not in OPEN_ORDER_STATUSES)
INTENTS = ("ENTRY", "EXIT")
ORDER_SIDES = ("buy", "sell")

# --- positions and lifecycle slices (public.positions, public.trade_history) -----------------
POSITION_SIDES = ("long", "short")
# The exchange side of a symbol that matters but holds nothing (exchange snapshots only).
FLAT = "flat"
# Which position an exchange row is (exchange snapshots' position_side): the one position of a
# symbol in one-way mode (Binance BOTH), or in hedge mode (dual-side) one of its two legs, named
# like the sides. The diff, the parity heartbeat and the EXIT backfill compare a hedge account
# leg by leg, a one-way account by its net position.
ONE_WAY = "both"
POSITION_LEGS = (ONE_WAY, *POSITION_SIDES)
SLICE_STATUSES = ("open", "closed")
OPEN_SLICE_STATUS = "open"

# --- profiles: the trading gate (public.profiles.trading_state) -------------------------------
ACTIVE, PAUSED, RECONCILING = TRADING_STATES = ("active", "paused", "reconciling")
# Who paused a profile (public.profiles.pause_source). The trading app may write sources of its
# own (the column has no CHECK); only the parity watchdog's pause is ever auto-resumed.
WATCHDOG_PAUSE_SOURCE = "parity_watchdog"
OPERATOR_PAUSE_SOURCE = "operator"
# What changed a profile's trading gate (recon.trading_gate_events.action).
GATE_ACTIONS = ("watchdog_pause", "auto_resume", "operator_pause", "operator_resume")
WATCHDOG_PAUSE, AUTO_RESUME, OPERATOR_PAUSE, OPERATOR_RESUME = GATE_ACTIONS

# --- the reconciliation cycle (recon.cycles, recon.mismatches) ---------------------------------
CYCLE_STATUSES = ("running", "succeeded", "failed")
# An account's cycle run that has not finished this long after it started is failed by Dagster's
# run monitoring (the `dagster/max_runtime` tag): a slow or stuck account cannot hold its
# partition's one cycle slot, or a run slot, for ever; the next tick starts a fresh cycle. Each
# request has its own timeout and retries are bounded; this bounds the whole run.
CYCLE_DEADLINE_SECONDS = 300
# A profile whose lifecycle corrections keep being refused is not retried every cycle: after two
# refusals in a row it waits BASE seconds, then twice as long after each further one, up to MAX
# (core/corrections.py `retry_after_refusals`); one applied correction ends the run.
REFUSAL_BACKOFF_BASE_SECONDS = 60
REFUSAL_BACKOFF_MAX_SECONDS = 1800
CYCLE_SUCCEEDED = "succeeded"
CYCLE_FAILED = "failed"
# Every kind of finding of the diff, in the order the diff sorts them (core/diff.py says what each
# one means).
MISSING_FROM_EXCHANGE = "missing_from_exchange"
MISSING_IN_DB = "missing_in_db"
STATUS_DRIFT, QTY_DRIFT, PRICE_DRIFT = "status_drift", "qty_drift", "price_drift"
POSITION_DRIFT = "position_drift"
GHOST_SLICE = "ghost_slice"
MISMATCH_KINDS = (
    MISSING_FROM_EXCHANGE, MISSING_IN_DB, STATUS_DRIFT, QTY_DRIFT, PRICE_DRIFT, POSITION_DRIFT,
    GHOST_SLICE,
)
# The kinds the lifecycle correction job acts on; the others are reported (and, for ghosts, left to
# the parity heartbeat).
ACTIONABLE_KINDS = (MISSING_FROM_EXCHANGE,)

# --- corrections (recon.corrections.handler) ---------------------------------------------------
# The runbook's lifecycle-safe handlers reconcileEntryFill, reconcileExitFill, reconcileCancel.
LIFECYCLE_HANDLERS = ("reconcile_entry_fill", "reconcile_exit_fill", "reconcile_cancel")
EXIT_BACKFILL = "exit_backfill"
SYNTHETIC_EXIT = "synthetic_exit"  # the parity heartbeat's last resort for a confirmed ghost
ADOPT_ORDER = "adopt_order"  # reserved for an operator-approved adoption of an order
CORRECTION_HANDLERS = LIFECYCLE_HANDLERS + (EXIT_BACKFILL, SYNTHETIC_EXIT, ADOPT_ORDER)
# What happened to a correction (recon.corrections.outcome): applied (with dry_run: would have
# been), refused by a check (an operator looks), or failed with an unexpected error.
APPLIED, REFUSED, FAILED = CORRECTION_OUTCOMES = ("applied", "refused", "failed")
# SQLSTATE of a refusal raised by a handler; its DETAIL is the reason code.
SQL_REFUSAL = "RCREF"
# Which lock a correction waited for (recon.lock_contention.lock_kind).
RECONCILIATION_LOCK, ROW_LOCK = LOCK_KINDS = ("reconciliation_lock", "row_lock")

# --- the parity heartbeat (recon.parity_checks.decision) -----------------------------------------
# What the heartbeat decided about one open slice in one cycle (core/parity.py says when):
CLEARED = "cleared"  # the exchange supports the slice: streak reset, quarantine released
CONFIRMING = "confirming"  # a ghost, seen n of N consecutive cycles
# SYNTHETIC_EXIT (above): the Nth consecutive sighting, attributed: close it at the mark price
QUARANTINE = "quarantine"  # confirmed but not attributable (or quarantined already): hands off
BLOCKED = "blocked"  # confirmed, but the watchdog tripped for the profile, dry run, or no price
AMBIGUOUS = "ambiguous"  # a shortfall on a shared symbol no single slice explains: reported
HELD = "held"  # could not be checked this cycle (changed a moment ago): checked next cycle
BACKFILL = "backfill"  # the EXIT backfill has real fills for it: evidence first
PARITY_DECISIONS = (CLEARED, CONFIRMING, SYNTHETIC_EXIT, QUARANTINE, BLOCKED, AMBIGUOUS, HELD,
                    BACKFILL)
# The close reason a synthetic exit writes on the slice (real exits say otherwise).
PARITY_CLOSE_REASON = "parity_synthetic_exit"
# A flat answer for ghosts of this many profiles of one account at once, with no real fill
# explaining them, is a systemic event (an exchange briefly reporting empty positions): every
# profile of the account is paused and nothing is closed (core/parity.py `systemic_reason`).
SYSTEMIC_MIN_PROFILES = 2
# How an operator ends a quarantine (the resolve_quarantine job).
QUARANTINE_RESOLUTIONS = ("release", "approve_synthetic_exit")

# --- the integrity watchdog and auto-resume (core/watchdog.py) -------------------------------------
# The kinds of the diff charged to a profile as the drift of its orders (position drift and
# ghosts are charged by core.watchdog's own rules).
ORDER_DRIFT_KINDS = (MISSING_FROM_EXCHANGE, MISSING_IN_DB, STATUS_DRIFT, QTY_DRIFT, PRICE_DRIFT)
# The runbook's four auto-resume conditions, after the flag that allows it at all, in the order
# they are reported (recon.watchdog_state.resume_held_back_by names the ones that do not hold).
RESUME_CONDITIONS = ("auto_resume_enabled", "pause_source", "min_pause", "clean_streak",
                     "cooldown")

# --- EXIT backfill (recon.backfill_decisions, core/backfill.py says when) -----------------------
GO, NO_GO = BACKFILL_DECISIONS = ("GO", "NO_GO")
# How a candidate exit fill is tied to an open slice (recon.backfill_decisions.match_mode). Strong,
# strongest first: the fill's client order id is the deterministic EXIT id of the slice's own trade;
# it carries the profile's sub tag; an explicit trade id hint names the trade.
BY_CLIENT_ORDER_ID, BY_SUB_TAG, BY_TRADE_ID_HINT = STRONG_MATCH_METHODS = (
    "client_order_id", "sub_tag", "trade_id_hint")
# Heuristic (RECON_EXIT_BACKFILL_ALLOW_HEURISTIC_MATCH): the only open slice of the account and
# symbol; the only open slice whose open qty equals the fill's qty.
SINGLE_OPEN_TRADE, QTY_UNIQUE = HEURISTIC_MATCH_METHODS = ("single_open_trade", "qty_unique")
BACKFILL_MATCH_METHODS = STRONG_MATCH_METHODS + HEURISTIC_MATCH_METHODS
# The close reason a backfilled exit writes on the slice it closes.
BACKFILL_CLOSE_REASON = "exit_fill_backfilled"
# An operator's call on a candidate (recon.backfill_reviews.verdict): the approve_backfill and
# reject_backfill jobs.
APPROVE, REJECT = BACKFILL_VERDICTS = ("approve", "reject")

# --- escalation (recon.alerts.reason) ------------------------------------------------------------
ALERT_REASONS = ("persistent_mismatch", "lock_contention", "unknown_fill", "failed_cycle",
                 "correction_refused", "failed_correction_run", "stale_reconciling",
                 "watchdog_pause", "auto_resume", "quarantine_released", "uncharged_drift",
                 "systemic")
# Where an alert's delivery stands (recon.alerts.delivery_status): posted and answered 2xx, waiting
# for its next attempt, no webhook configured, or given up after the last attempt.
(ALERT_PENDING, ALERT_DELIVERED, ALERT_NOT_CONFIGURED,
 ALERT_GIVEN_UP) = ALERT_DELIVERY_STATUSES = ("pending", "delivered", "not_configured", "given_up")
# Retries of a failed post: the first after 30 s, doubling, at most an hour apart, 10 in all.
ALERT_RETRY_FIRST_S, ALERT_RETRY_MAX_S, ALERT_MAX_ATTEMPTS = 30, 3600, 10
# The runbook: "Mismatch metrics stay elevated after two reconciliation runs".
ESCALATION_PERSISTENCE_RUNS = 2

# --- quantities ----------------------------------------------------------------------------------
# Absolute tolerance of a quantity comparison (float noise of numeric -> float), and the relative
# slack below a whole quantity step when "less than one step" is decided (0.009 - 0.002 - 0.008
# is a whole 0.001 step, not 0.000999...): the diff, the parity heartbeat, the EXIT backfill.
QTY_ABS_TOL = 1e-12
STEP_SLACK = 1e-6

# --- money ---------------------------------------------------------------------------------------
# Assets whose amounts are booked as USD one for one (fees paid in them need no conversion).
USD_FEE_CURRENCIES = frozenset({"USD", "USDT", "USDC", "BUSD", "FDUSD"})


def sql_list(values) -> str:
    """`values` as a SQL list of string literals, for the few queries that spell a rule inline
    (the values are this module's constants, never user input)."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)

# --- what the exchange keeps (Binance USD-M; a second exchange names its own) --------------------
# GET order finds no order created more than 90 days ago, nor one cancelled or expired without a
# fill 3 days after it was created; userTrades answers for at most 7 days per request (the last
# 7 days when no range is given).
ORDER_QUERY_RETENTION_DAYS = 90
UNFILLED_ORDER_QUERY_RETENTION_DAYS = 3
TRADES_QUERY_WINDOW_DAYS = 7
