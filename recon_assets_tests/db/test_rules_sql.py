"""The SQL side of the rules equals core/rules.py: the CHECK constraints and the open-status list
are read from a live, migrated database (editing either side alone fails here)."""

import re

import psycopg
import pytest

from recon_assets.core import rules

pytestmark = pytest.mark.db

# (table, column) -> the rules list its CHECK constraint must allow, exactly.
CHECKED = {
    ("public.orders", "status"): rules.ORDER_STATUSES,
    ("public.orders", "intent"): rules.INTENTS,
    ("public.orders", "side"): rules.ORDER_SIDES,
    ("public.applied_fills", "side"): rules.ORDER_SIDES,
    ("recon.exchange_fills", "side"): rules.ORDER_SIDES,
    ("public.positions", "side"): rules.POSITION_SIDES,
    ("public.trade_history", "side"): rules.POSITION_SIDES,
    ("public.trade_history", "status"): rules.SLICE_STATUSES,
    ("public.profiles", "trading_state"): rules.TRADING_STATES,
    ("recon.cycles", "status"): rules.CYCLE_STATUSES,
    ("recon.mismatches", "kind"): rules.MISMATCH_KINDS,
    ("recon.corrections", "handler"): rules.CORRECTION_HANDLERS,
    ("recon.corrections", "outcome"): rules.CORRECTION_OUTCOMES,
    ("recon.lock_contention", "lock_kind"): rules.LOCK_KINDS,
    ("recon.backfill_decisions", "decision"): rules.BACKFILL_DECISIONS,
    ("recon.backfill_decisions", "match_mode"): rules.BACKFILL_MATCH_METHODS,
    ("recon.backfill_reviews", "verdict"): rules.BACKFILL_VERDICTS,
    ("recon.alerts", "reason"): rules.ALERT_REASONS,
    ("recon.alerts", "delivery_status"): rules.ALERT_DELIVERY_STATUSES,
    ("recon.parity_checks", "decision"): rules.PARITY_DECISIONS,
    ("recon.parity_checks", "side"): rules.POSITION_SIDES,
    ("recon.trading_gate_events", "action"): rules.GATE_ACTIONS,
    ("recon.exchange_fills", "position_side"): rules.POSITION_LEGS,
}
_ALLOWED = re.compile(r"^CHECK \(\(\(?(\w+)\)?(?:::text)? = ANY \(\(?ARRAY\[(.*)\]\)?(?:::text\[\])?\)\)\)$")


def _allowed_values(conn, table: str, column: str) -> set[str]:
    """The value list of the CHECK constraint of `table` that names only `column`."""
    found = []
    for (definition,) in conn.execute(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "WHERE c.conrelid = %s::regclass AND c.contype = 'c'", (table,)).fetchall():
        match = _ALLOWED.match(definition)
        if match and match.group(1) == column:
            found.append(re.findall(r"'((?:[^']|'')*)'", match.group(2)))
    assert len(found) == 1, f"{table}.{column}: expected one CHECK (... = ANY (ARRAY[...]))"
    return set(found[0])


@pytest.fixture
def conn(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        yield conn


@pytest.mark.parametrize("table,column", sorted(CHECKED))
def test_check_constraint_allows_exactly_the_rules_list(conn, table, column):
    assert _allowed_values(conn, table, column) == set(CHECKED[(table, column)])


def test_open_order_statuses_are_the_same_in_sql(conn):
    (statuses,) = conn.execute("SELECT recon.open_order_statuses()").fetchone()
    assert tuple(statuses) == rules.OPEN_ORDER_STATUSES


def test_no_function_spells_the_open_statuses_itself(conn):
    """The functions ask recon.open_order_statuses(); none writes its own list of them."""
    listed = []
    for name, body in conn.execute(
            "SELECT p.oid::regprocedure::text, p.prosrc FROM pg_proc p "
            "WHERE p.pronamespace IN ('public'::regnamespace, 'recon'::regnamespace) "
            "AND p.proname <> 'open_order_statuses'").fetchall():
        for literal_list in re.findall(r"(?:IN\s*\(|ARRAY\s*\[)([^)\]]*)[)\]]", body, re.I):
            values = set(re.findall(r"'((?:[^']|'')*)'", literal_list))
            if values & set(rules.OPEN_ORDER_STATUSES) and values != set():
                if values <= set(rules.ORDER_STATUSES) and "partially_filled" in values:
                    listed.append(f"{name}: {sorted(values)}")
    assert not listed, "use recon.open_order_statuses():\n" + "\n".join(listed)
