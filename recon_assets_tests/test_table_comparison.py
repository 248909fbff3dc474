"""The comparison "recovered equals uninterrupted" (harness/tables.py) sees what a flow decided:
two databases that differ only in a flag, a counter or a JSON document's content differ, and
two that differ only in ids, times and run ids compare equal."""

import psycopg
import pytest

from recon_assets_tests.harness.tables import table_differences, table_rows

pytestmark = pytest.mark.db

RUN_A, RUN_B = "0b9d6a56-1f0e-4b8e-9d55-2a7c1b0e0f11", "7f3c2e10-5a4b-4c3d-8e2f-0a1b2c3d4e5f"


def _seed(dsn: str, run: str, *, dry_run: bool = False, needed: int = 3,
          evidence_qty: str = "0.5") -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, "
            "trade_id, dry_run, evidence) VALUES (%s, %s, 'alpha', 'reconcile_cancel', 't-a1', "
            "%s, jsonb_build_object('run', %s::text, 'read_at', now(), 'qty', %s::text))",
            (f"k-{run}", run, dry_run, run, evidence_qty))
        conn.execute(
            "INSERT INTO recon.watchdog_state (profile_id, triggered, clean_cycles, "
            "last_cycle_id, resume_clean_cycles_needed) VALUES ('alpha', true, 1, %s, %s)",
            (run, needed))


@pytest.fixture
def two(pg_dsn, sim, pg_server, template_copies):
    other = template_copies.take()
    plan = sim.load_scenario("demo")
    try:
        for dsn in (pg_dsn, pg_server.dsn(other)):
            plan.seed_database(dsn)
        yield pg_dsn, pg_server.dsn(other)
    finally:
        pg_server.drop_database(other)


@pytest.mark.parametrize("change,tables", [
    # the health totals count corrections by their flag (migration 0024)
    ({"dry_run": True}, {"recon.corrections", "recon.correction_totals"}),
    ({"evidence_qty": "0.4"}, {"recon.corrections"}),
    ({"needed": 5}, {"recon.watchdog_state"}),
])
def test_a_flag_a_counter_or_evidence_that_differs_is_a_difference(two, change, tables):
    a, b = two
    _seed(a, RUN_A)
    _seed(b, RUN_B, **change)
    assert set(table_differences(table_rows(a), table_rows(b))) == tables


def test_ids_times_and_run_ids_alone_are_no_difference(two):
    a, b = two
    _seed(a, RUN_A)
    with psycopg.connect(b) as conn:  # other sequence ids: a row written and removed first
        conn.execute("INSERT INTO recon.watchdog_state (profile_id) VALUES ('x')")
        conn.execute("DELETE FROM recon.watchdog_state WHERE profile_id = 'x'")
    _seed(b, RUN_B)
    assert table_differences(table_rows(a), table_rows(b)) == {}
