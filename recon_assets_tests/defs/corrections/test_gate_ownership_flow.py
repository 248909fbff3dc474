"""The reconciling gate has one owner, even when restored (issue item 8), through Dagster: the
next cycle's `cycle_start` restores a session that grew older than the bound while its run is
still running, and that run can neither correct the profile afterwards nor take the gate again."""

import dagster as dg
import psycopg
import pytest

from recon_assets.core.corrections import refusal_of
from recon_assets.defs.apply import begin_gate
from recon_assets.resources.database import PostgresStore
from recon_assets_tests.harness.dagster_flow import (add_partitions, make_defs, query,
                                                     run_scheduled_cycles, running_run)

pytestmark = pytest.mark.integration


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_a_run_whose_old_session_the_next_cycle_restored_corrects_nothing(sim, pg_dsn, instance):
    plan = sim.load_scenario("clean")
    plan.seed_database(pg_dsn)
    add_partitions(instance, plan)
    store = PostgresStore(dsn=pg_dsn)
    # Run R owns alpha's gate and is still running, but its session is older than the bound.
    owner = running_run(instance, "lifecycle_correction", {"recon/profile": "alpha"})
    store.call("recon_begin_reconciling", {"p_profile_id": "alpha", "p_cycle_id": owner.run_id})
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE recon.reconciling SET started_at = now() - interval '2 hours'")
    defs = make_defs(sim, pg_dsn)
    results = run_scheduled_cycles(defs, instance)
    cycle_run = results["acct1"].run_id
    assert query(pg_dsn, "SELECT trading_state FROM profiles WHERE id = 'alpha'") == [("active",)]
    assert query(pg_dsn, "SELECT count(*) FROM recon.reconciling") == [(0,)]
    assert query(pg_dsn, "SELECT profile_id, cycle_id, revoked_by, why "
                         "FROM recon.reconciling_revoked") == [
        ("alpha", owner.run_id, cycle_run, "restored")]

    # R goes on: its correction (the cancel of alpha's resting EXIT order) is refused.
    ((coid,),) = query(pg_dsn, "SELECT client_order_id FROM orders "
                               "WHERE profile_id = 'alpha' AND status = 'open'")
    with pytest.raises(psycopg.Error) as err:
        store.call("recon_reconcile_cancel", {
            "p_profile_id": "alpha", "p_cycle_id": owner.run_id,
            "p_idempotency_key": f"late-cancel:{coid}", "p_client_order_id": coid,
            "p_filled_qty": "0", "p_dry_run": False})
    refusal = refusal_of(err.value)
    assert (refusal.outcome, refusal.reason) == ("refused", "gate_revoked")
    assert owner.run_id in refusal.message and cycle_run in refusal.message
    assert query(pg_dsn, "SELECT status FROM orders WHERE client_order_id = %s", (coid,)) == [
        ("open",)]
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections WHERE NOT dry_run") == [(0,)]

    # Nor can R take the gate again, as the correction ops would through begin_gate.
    context = dg.build_op_context(instance=instance)
    with pytest.raises(dg.Failure, match="lost the reconciling gate"):
        begin_gate(context, store, "alpha", owner.run_id, 1800.0)
    assert query(pg_dsn, "SELECT trading_state FROM profiles WHERE id = 'alpha'") == [("active",)]
    assert query(pg_dsn, "SELECT count(*) FROM recon.reconciling") == [(0,)]
