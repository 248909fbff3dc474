"""The reconciler's invariants, read from the trading database alone (issue 18). The reliability
tests (faults, kills, the soak, bad input) call `assert_invariants(dsn)` after every cycle; a
violation names the invariant and the first offending rows.

Each one is a SELECT that returns the rows breaking it (none when it holds):

- slice_quantities: every slice's entry qty = exit qty + virtual open qty, none negative, and a
  closed slice has nothing open;
- position_equals_booked_fills: each position (signed, per profile and symbol) equals the sum
  of its booked fills (applied_fills, buys +, sells -), and no position row is left at zero;
- order_filled_equals_booked_fills: an order's filled qty equals the fills booked for it;
- capital_ledger_recalculated: the ledger equals its recalculation from the open slices
  (recon_recalculate_capital's rule), to the cent the trading app books;
- fill_booked_once: no exchange fill id booked twice (also not under another account's name);
- correction_has_evidence: every applied correction row has its request and, unless it changed
  nothing, its before/after change; every synthetic fill has its applied correction;
- no_orphan_reconciling: no profile left `reconciling` (or a recon.reconciling row) by a run that
  is not running (`running_cycles` names those that are);
- synthetic_exit_allowed: no synthetic exit for an unattributed slice, for a profile the
  watchdog tripped or paused in that cycle, or before the required confirmations.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from recon_assets.core.rules import (
    APPLIED, PARITY_CLOSE_REASON, RECONCILING, SYNTHETIC_EXIT, WATCHDOG_PAUSE)

INVARIANTS: dict[str, str] = {
    "slice_quantities": """
        SELECT profile_id, trade_id, slice_no, entry_qty, exit_qty, virtual_open_qty, status
        FROM public.trade_history
        WHERE entry_qty <> exit_qty + virtual_open_qty OR entry_qty < 0 OR exit_qty < 0
           OR virtual_open_qty < 0 OR (status = 'closed' AND virtual_open_qty <> 0)
           OR entry_qty = 'NaN' OR exit_qty = 'NaN'""",
    "position_equals_booked_fills": """
        WITH booked AS (
            SELECT profile_id, symbol,
                   sum(CASE side WHEN 'buy' THEN qty ELSE -qty END) AS signed_qty
            FROM public.applied_fills GROUP BY 1, 2),
        held AS (
            SELECT profile_id, symbol, CASE side WHEN 'long' THEN qty ELSE -qty END AS signed_qty
            FROM public.positions)
        SELECT coalesce(h.profile_id, b.profile_id) AS profile_id,
               coalesce(h.symbol, b.symbol) AS symbol,
               h.signed_qty AS position_qty, b.signed_qty AS booked_qty
        FROM held h FULL JOIN booked b USING (profile_id, symbol)
        WHERE coalesce(h.signed_qty, 0) <> coalesce(b.signed_qty, 0)
           OR h.signed_qty = 0""",
    "order_filled_equals_booked_fills": """
        SELECT o.profile_id, o.client_order_id, o.filled_qty, coalesce(f.qty, 0) AS booked_qty
        FROM public.orders o
        LEFT JOIN (SELECT client_order_id, sum(qty) AS qty FROM public.applied_fills
                   WHERE client_order_id IS NOT NULL GROUP BY 1) f USING (client_order_id)
        WHERE o.filled_qty <> coalesce(f.qty, 0)""",
    "capital_ledger_recalculated": """
        WITH expected AS (
            SELECT profile_id, trade_id,
                   sum(virtual_open_qty * coalesce(entry_price, 0)) AS reserved_usd
            FROM public.trade_history WHERE status = 'open' GROUP BY 1, 2)
        SELECT coalesce(l.profile_id, e.profile_id) AS profile_id,
               coalesce(l.trade_id, e.trade_id) AS trade_id,
               l.reserved_usd AS ledger_usd, e.reserved_usd AS recalculated_usd
        FROM public.capital_ledger l FULL JOIN expected e USING (profile_id, trade_id)
        WHERE l.reserved_usd IS NULL OR e.reserved_usd IS NULL
           OR abs(l.reserved_usd - e.reserved_usd) > 0.01""",
    "fill_booked_once": """
        SELECT symbol, exchange_fill_id, count(*) AS times, array_agg(profile_id) AS profiles
        FROM public.applied_fills GROUP BY 1, 2 HAVING count(*) > 1""",
    "correction_has_evidence": f"""
        SELECT id, handler, profile_id, trade_id, 'no request or change' AS missing
        FROM recon.corrections
        WHERE outcome = '{APPLIED}' AND NOT dry_run
          AND NOT (evidence ? 'request' AND evidence ? 'change')
        UNION ALL
        SELECT f.id, '{SYNTHETIC_EXIT}', f.profile_id, f.trade_id, 'synthetic fill, no correction'
        FROM public.applied_fills f
        WHERE f.exchange_fill_id LIKE 'synthetic:%'
          AND NOT EXISTS (SELECT 1 FROM recon.corrections c
                          WHERE c.outcome = '{APPLIED}' AND NOT c.dry_run
                            AND c.handler = '{SYNTHETIC_EXIT}'
                            AND f.exchange_fill_id = 'synthetic:' || c.idempotency_key)""",
    "no_orphan_reconciling": f"""
        SELECT p.id AS profile_id, p.trading_state, r.cycle_id
        FROM public.profiles p FULL JOIN recon.reconciling r ON r.profile_id = p.id
        WHERE (p.trading_state = '{RECONCILING}' OR r.profile_id IS NOT NULL)
          AND NOT coalesce(r.cycle_id = ANY (%(running)s::text[]), false)""",
    # A synthetic exit's correction row is its parity run's; the heartbeat check it applies is
    # found by the idempotency key they share, and that check's cycle is the one judged.
    "synthetic_exit_allowed": f"""
        SELECT c.id, c.profile_id, c.trade_id, pc.cycle_id, pc.attributable, pc.streak,
               pc.confirmations_required, w.tripped AS watchdog_tripped,
               g.id IS NOT NULL AS paused_that_cycle
        FROM recon.corrections c
        LEFT JOIN recon.parity_checks pc
          ON pc.idempotency_key = c.idempotency_key AND pc.profile_id = c.profile_id
         AND pc.decision = '{SYNTHETIC_EXIT}'
        LEFT JOIN recon.watchdog_checks w
          ON w.cycle_id = pc.cycle_id AND w.profile_id = c.profile_id
        LEFT JOIN recon.trading_gate_events g
          ON g.cycle_id = pc.cycle_id AND g.profile_id = c.profile_id
         AND g.action = '{WATCHDOG_PAUSE}'
        WHERE c.handler = '{SYNTHETIC_EXIT}' AND c.outcome = '{APPLIED}' AND NOT c.dry_run
          AND (pc.id IS NULL OR NOT pc.attributable OR pc.streak < pc.confirmations_required
               OR coalesce(w.tripped, false) OR g.id IS NOT NULL)
        UNION ALL
        SELECT NULL, t.profile_id, t.trade_id, NULL, NULL, NULL, NULL, NULL, NULL
        FROM public.trade_history t
        WHERE t.close_reason = '{PARITY_CLOSE_REASON}'
          AND NOT EXISTS (SELECT 1 FROM recon.corrections c
                          WHERE c.handler = '{SYNTHETIC_EXIT}' AND c.outcome = '{APPLIED}'
                            AND NOT c.dry_run AND c.profile_id = t.profile_id
                            AND c.trade_id = t.trade_id)""",
}


class InvariantViolated(AssertionError):
    pass


def violations(dsn: str, running_cycles: Iterable[str] = ()) -> dict[str, list[dict]]:
    """{invariant: the rows breaking it} for every invariant that does not hold."""
    found: dict[str, list[dict]] = {}
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        # One snapshot for all of them: a run in flight cannot make two of them disagree.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        for name, query in INVARIANTS.items():
            params = {"running": list(running_cycles)} if "%(running)s" in query else None
            rows = conn.execute(query, params).fetchall()
            if rows:
                found[name] = rows
    return found


def assert_invariants(dsn: str, running_cycles: Iterable[str] = (), when: str = "") -> None:
    """Raise `InvariantViolated` naming each invariant that does not hold (first rows shown)."""
    found = violations(dsn, running_cycles)
    if found:
        lines = [f"{name}: {rows[:3]}" + (f" (+{len(rows) - 3} more)" if len(rows) > 3 else "")
                 for name, rows in found.items()]
        raise InvariantViolated(f"invariants broken{' ' + when if when else ''}:\n  "
                                + "\n  ".join(lines))
