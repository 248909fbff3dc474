"""The invariants of the reliability tests (harness/invariants.py) can fail: each one holds on a
seeded scenario, and each one reports a violation planted behind the handlers' back (as the
owner, which no handler would write)."""

import psycopg
import pytest

from recon_assets_tests.harness.invariants import (INVARIANTS, InvariantViolated,
                                                   assert_invariants, violations)

pytestmark = pytest.mark.db

# One way to break each invariant, written as the database owner.
PLANTED = {
    "slice_quantities":
        "UPDATE trade_history SET status = 'closed', closed_at = now() "
        "WHERE id = (SELECT min(id) FROM trade_history WHERE status = 'open')",
    "position_equals_booked_fills":
        "UPDATE positions SET qty = qty + 1 WHERE (profile_id, symbol) = "
        "(SELECT profile_id, symbol FROM positions ORDER BY 1, 2 LIMIT 1)",
    "order_filled_equals_booked_fills":
        "UPDATE orders SET filled_qty = 0 WHERE id = (SELECT min(id) FROM orders "
        "WHERE filled_qty > 0)",
    "capital_ledger_recalculated":
        "UPDATE capital_ledger SET reserved_usd = reserved_usd + 5 WHERE (profile_id, trade_id) = "
        "(SELECT profile_id, trade_id FROM capital_ledger ORDER BY 1, 2 LIMIT 1)",
    "fill_booked_once":
        # The same exchange fill booked again under another account's name: the table's own
        # unique key (account, symbol, fill id) does not stop that one.
        "INSERT INTO applied_fills (exchange_account, symbol, exchange_fill_id, profile_id, "
        "side, qty, price, filled_at) SELECT exchange_account || '-other', symbol, "
        "exchange_fill_id, profile_id, side, qty, price, filled_at FROM applied_fills "
        "ORDER BY id LIMIT 1",
    "correction_has_evidence":
        "INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id, "
        "dry_run, evidence) VALUES ('k-planted', 'c-planted', 'alpha', 'reconcile_cancel', 't', "
        "false, '{}')",
    "no_orphan_reconciling":
        "UPDATE profiles SET trading_state = 'reconciling' WHERE id = 'alpha'",
    "synthetic_exit_allowed":
        "INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id, "
        "dry_run, evidence) VALUES ('k-synthetic', 'c-planted', 'alpha', 'synthetic_exit', "
        "'t-a1', false, '{\"request\": {}, \"change\": {}}')",
}


@pytest.fixture
def seeded(pg_dsn, sim):
    sim.load_scenario("demo").seed_database(pg_dsn)
    return pg_dsn


def test_every_invariant_has_a_planted_violation():
    assert PLANTED.keys() == INVARIANTS.keys()


def test_the_invariants_hold_on_a_seeded_scenario(seeded):
    assert violations(seeded) == {}
    assert_invariants(seeded)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_each_invariant_reports_its_violation(seeded, name):
    with psycopg.connect(seeded) as conn:
        assert conn.execute(PLANTED[name]).rowcount == 1
    found = violations(seeded)
    # Some break a second invariant too (a fill booked twice also moves the position off its
    # fills; a slice closed with qty open leaves the ledger's row); each is caught by its own.
    assert name in found, found
    with pytest.raises(InvariantViolated, match=name):
        assert_invariants(seeded, when="after the planted write")


def test_a_profile_reconciling_under_a_running_cycle_is_no_violation(seeded):
    with psycopg.connect(seeded) as conn:
        conn.execute("UPDATE profiles SET trading_state = 'reconciling' WHERE id = 'alpha'")
        conn.execute("INSERT INTO recon.reconciling (profile_id, cycle_id) VALUES ('alpha', 'run-1')")
    assert "no_orphan_reconciling" in violations(seeded)
    assert violations(seeded, running_cycles=["run-1"]) == {}


# synthetic_exit_allowed has one branch per rule a synthetic exit must keep; each is planted on
# its own (a synthetic exit whose heartbeat check broke that rule and no other).
def _synthetic_exit(attributable: str = "true", streak: int = 3) -> str:
    return (
        "INSERT INTO recon.parity_checks (cycle_id, exchange_account, profile_id, trade_id, "
        "slice_no, symbol, side, virtual_open_qty, attributable, ghost, streak, "
        "confirmations_required, decision, reason, idempotency_key) VALUES ('c-pc', 'acct1', "
        f"'alpha', 't-a1', 1, 'BTC/USDT:USDT', 'long', 0.1, {attributable}, true, {streak}, 3, "
        "'synthetic_exit', 'planted', 'k-branch');"
        "INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id, "
        "dry_run, evidence) VALUES ('k-branch', 'c-parity', 'alpha', 'synthetic_exit', 't-a1', "
        "false, '{\"request\": {}, \"change\": {}}');")


_WATCHDOG_ROW = (
    "INSERT INTO recon.watchdog_checks (cycle_id, exchange_account, profile_id, "
    "allocated_capital_usd, mismatch_notional_usd, threshold_pct, threshold_usd, tripped, clean, "
    "reason) VALUES ('c-pc', 'acct1', 'alpha', 1000, {drift}, 5, 50, {tripped}, false, 'planted');")
SYNTHETIC_EXIT_BRANCHES = {
    "not attributable": _synthetic_exit(attributable="false"),
    "short of its confirmations": _synthetic_exit(streak=2),
    "the watchdog tripped that cycle": _synthetic_exit()
    + _WATCHDOG_ROW.format(drift=900, tripped="true"),
    "the profile was paused that cycle": _synthetic_exit()
    + "INSERT INTO recon.trading_gate_events (profile_id, action, previous_state, trading_state, "
      "reason, cycle_id) VALUES ('alpha', 'watchdog_pause', 'active', 'paused', 'planted', 'c-pc')",
    "closed at the mark with no correction":
        "UPDATE trade_history SET close_reason = 'parity_synthetic_exit' WHERE id = "
        "(SELECT min(id) FROM trade_history WHERE profile_id = 'alpha')",
}


@pytest.mark.parametrize("branch", sorted(SYNTHETIC_EXIT_BRANCHES))
def test_each_rule_of_a_synthetic_exit_is_checked_on_its_own(seeded, branch):
    with psycopg.connect(seeded) as conn:
        conn.execute(SYNTHETIC_EXIT_BRANCHES[branch])
    assert "synthetic_exit_allowed" in violations(seeded), branch


def test_a_synthetic_exit_that_kept_every_rule_is_no_violation(seeded):
    with psycopg.connect(seeded) as conn:
        conn.execute(_synthetic_exit() + _WATCHDOG_ROW.format(drift=0, tripped="false"))
    assert "synthetic_exit_allowed" not in violations(seeded)
