"""Database faults (issue 18, "reliability proof"): the connection lost before, during and after a
correction transaction, a statement timeout in a correction and in a cycle's snapshot, and the
database restarted mid-cycle. Real PostgreSQL, the real simulator, the automation path as the
daemon drives it (schedule -> cycle -> sensor -> correction job); the faults come from
recon_assets_tests/harness/db_faults.py.

Each test: the faulty run either succeeds with the right outcome or fails loudly (the error names
the database problem, no secret) and the failure is recorded; the retry (the next cycle and the
sensor's next request, as the daemon would) completes; the trading tables end equal to those of
a fault-free run (no double booking); the invariants hold after every cycle; health is
unhealthy while the fault lasts and healthy after a good cycle.
"""

import os
import shutil
import tempfile

import dagster as dg
import psycopg
import pytest
from dagster._core.events import DagsterEventType

from recon_assets.definitions import build_defs
from recon_assets.defs.reconciliation.definitions import failed_cycle_sensor
from recon_assets.local_postgres import LocalPostgres
from recon_assets.metrics.health import HealthUnavailable, load_state
from recon_assets.resources.alerts import AlertWebhook
from recon_assets.resources.database import DatabaseUnavailable, PostgresStore, connection_lost
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets_tests.harness.dagster_flow import (add_partitions, after_first_cycle,
                                                     diff_rows, evaluate_correction_sensor,
                                                     make_defs, query, run_corrections,
                                                     run_scheduled_cycles)
from recon_assets_tests.harness.db_faults import (HOOK, LOST_AFTER, LOST_BEFORE, LOST_DURING,
                                                  SNAPSHOT, STATEMENT_TIMEOUT, inject_fault)
from recon_assets_tests.harness.exchange import running_simulator
from recon_assets_tests.harness.invariants import assert_invariants
from recon_assets_tests.harness.postgres import (create_api_roles, create_migrated_database,
                                                   serving_health)

pytestmark = pytest.mark.integration

ENTRY_FILL = "recon_reconcile_entry_fill"

# What "the same trading state" means: every money column of the trading tables, without the
# timestamps a later run stamps differently.
STATE_QUERIES = {
    "orders": "SELECT profile_id, trade_id, client_order_id, exchange_order_id, status, qty,"
              " filled_qty, avg_fill_price FROM orders ORDER BY client_order_id",
    "trade_history": "SELECT profile_id, trade_id, slice_no, entry_qty, exit_qty,"
                     " virtual_open_qty, entry_price, exit_price, realised_pnl_usd, status,"
                     " close_reason FROM trade_history ORDER BY trade_id, slice_no",
    "positions": "SELECT profile_id, symbol, side, qty, avg_price FROM positions ORDER BY 1, 2",
    "applied_fills": "SELECT exchange_account, symbol, exchange_fill_id, client_order_id,"
                     " profile_id, trade_id, side, qty, price, fee_usd FROM applied_fills"
                     " ORDER BY 1, 2, 3",
    "capital_ledger": "SELECT profile_id, trade_id, reserved_usd FROM capital_ledger ORDER BY 1, 2",
    "profiles": "SELECT id, trading_state, pause_source FROM profiles ORDER BY id",
    "applied_corrections": "SELECT profile_id, handler, client_order_id, trade_id"
                           " FROM recon.corrections WHERE outcome = 'applied' AND NOT dry_run"
                           " ORDER BY 1, 2, 3",
}


def trading_state(dsn):
    return {name: query(dsn, sql) for name, sql in STATE_QUERIES.items()}


def assert_no_double_booking(dsn):
    assert query(dsn, "SELECT exchange_account, symbol, exchange_fill_id FROM applied_fills"
                      " GROUP BY 1, 2, 3 HAVING count(*) > 1") == []
    assert query(dsn, "SELECT idempotency_key FROM recon.corrections WHERE outcome = 'applied'"
                      " GROUP BY 1 HAVING count(*) > 1") == []
    # One applied correction per order and handler: a re-run under another key would show here.
    assert query(dsn, "SELECT client_order_id, handler FROM recon.corrections"
                      " WHERE outcome = 'applied' AND NOT dry_run"
                      " GROUP BY 1, 2 HAVING count(*) > 1") == []


@pytest.fixture(scope="module")
def fault_free_state(pg_server, template_copies):
    """The trading tables after the lifecycle scenario's fault-free flow: cycle, corrections,
    cycle."""
    name = template_copies.take()
    dsn = pg_server.dsn(name)
    try:
        with running_simulator() as sim, dg.instance_for_test() as instance:
            defs = after_first_cycle(sim, dsn, instance)
            results = run_corrections(defs, instance,
                                      evaluate_correction_sensor(defs, instance).run_requests)
            assert results and all(r.success for r in results)
            assert diff_rows(run_scheduled_cycles(defs, instance)) == []
            assert_invariants(dsn)
            yield trading_state(dsn)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def healthy(dsn) -> bool:
    return load_state(dsn).health["reconciliationLoopHealthy"]


def step_errors(result) -> list[str]:
    return [e.event_specific_data.error.to_string() for e in result.get_step_failure_events()]


def retry_until_clean(defs, instance, dsn, cursor, rounds=3):
    """What the daemon does next: the next scheduled cycle, the correction sensor's requests
    for it, their runs; until a cycle finds no drift. Invariants after every cycle."""
    for _ in range(rounds):
        cycles = run_scheduled_cycles(defs, instance)
        assert_invariants(dsn, when="after a retry cycle")
        if not diff_rows(cycles):
            return
        tick = evaluate_correction_sensor(defs, instance, cursor=cursor)
        cursor = tick.cursor
        results = run_corrections(defs, instance, tick.run_requests)
        assert all(r.success for r in results), [step_errors(r) for r in results]
        assert_invariants(dsn, when="after a retry correction")
    raise AssertionError(f"drift left after {rounds} retry cycles")


def escalated_reasons(defs, instance, dsn):
    """Evaluate the escalation sensor; the reasons of the alerts raised so far."""
    with dg.build_sensor_context(instance=instance, resources={
            "database": defs.resources["database"], "alert_webhook": AlertWebhook()}) as context:
        defs.get_sensor_def("escalation_sensor")(context)
    return {r for (r,) in query(dsn, "SELECT DISTINCT reason FROM recon.alerts")}


def failed_corrections(dsn):
    return query(dsn, "SELECT handler, reason, evidence->>'error' FROM recon.corrections"
                      " WHERE outcome = 'failed' ORDER BY id")


def impatient(defs, dsn, **timeouts):
    """The same definitions over a store with short timeouts (a statement-timeout fault)."""
    store = PostgresStore(dsn=dsn, **timeouts)
    return build_defs({**defs.resources, "database": store,
                       "io_manager": PostgresFrameIOManager(database=store)})


def report_failed_cycle(defs, instance, result):
    """What the daemon does when a cycle run failed: evaluate failed_cycle_sensor on its real
    RUN_FAILURE event."""
    run = instance.get_run_by_id(result.run_id)
    (entry,) = instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE)
    with dg.build_run_status_sensor_context(
            sensor_name=failed_cycle_sensor.name, dagster_instance=instance, dagster_run=run,
            dagster_event=entry.dagster_event,
            resources={"database": defs.resources["database"]}).for_run_failure() as context:
        failed_cycle_sensor(context)


def run_cycle(defs, instance, account):
    job = defs.resolve_job_def("reconciliation_cycle")
    return job.execute_in_process(instance=instance, partition_key=account,
                                  tags={"recon/account": account}, raise_on_error=False)


def entry_order(dsn):
    """The ENTRY order the first cycle found missing from the exchange (entry-fill handler)."""
    return query(dsn, "SELECT DISTINCT o.client_order_id FROM recon.mismatches m JOIN orders o"
                      " USING (client_order_id) WHERE m.kind = 'missing_from_exchange'"
                      " AND o.intent = 'ENTRY' AND o.status IN ('new', 'open')")[0][0]


def outcomes_of(results):
    return {o["client_order_id"]: o for r in results
            for o in r.output_for_node("correct_profile")["outcomes"]}


# --- the connection lost around a correction transaction --------------------------------------

@pytest.mark.parametrize("kind", [LOST_BEFORE, LOST_DURING, LOST_AFTER])
def test_connection_lost_around_a_correction_the_run_finds_out_and_applies_it_once(
        sim, pg_dsn, instance, fault_free_state, kind):
    """The handler call's connection is lost before the statement, mid-transaction (it had
    written the order and the slice) or after the commit (the answer lost). The run re-sends
    the call once on a fresh connection: the idempotency key makes it apply the correction
    (not applied before) or answer already_applied (committed before): the run succeeds with
    every correction applied once, and nothing is recorded as failed."""
    defs = after_first_cycle(sim, pg_dsn, instance)
    assert_invariants(pg_dsn, when="after the first cycle")
    tick = evaluate_correction_sensor(defs, instance)
    order = entry_order(pg_dsn)

    with inject_fault(kind, ENTRY_FILL) as fault:
        results = run_corrections(defs, instance, tick.run_requests)
    assert fault.fired == 1 and isinstance(fault.errors[0], psycopg.OperationalError)
    if kind == LOST_DURING:  # killed mid-transaction: it had written the order and its slice
        assert {"public.orders", "public.trade_history"} <= set(fault.written_at_kill)
    assert all(r.success for r in results), [step_errors(r) for r in results]
    status = outcomes_of(results)[order]["status"]
    assert status == ("already_applied" if kind == LOST_AFTER else "applied")
    assert failed_corrections(pg_dsn) == []
    assert query(pg_dsn, "SELECT count(*) FROM recon.corrections WHERE outcome = 'applied'"
                         " AND client_order_id = %s", (order,)) == [(1,)]
    assert_invariants(pg_dsn, when="after the faulty correction run")

    retry_until_clean(defs, instance, pg_dsn, tick.cursor)
    assert trading_state(pg_dsn) == fault_free_state
    assert_no_double_booking(pg_dsn)
    assert healthy(pg_dsn)


def test_connection_lost_after_the_gate_was_taken_leaves_no_profile_reconciling(
        sim, pg_dsn, instance, fault_free_state):
    """The answer of recon_begin_reconciling is lost after its commit: the profile is
    `reconciling` under this run. The run must not leave it so (the invariant
    no_orphan_reconciling), whatever it does next."""
    defs = after_first_cycle(sim, pg_dsn, instance)
    tick = evaluate_correction_sensor(defs, instance)
    with inject_fault(LOST_AFTER, "recon_begin_reconciling") as fault:
        results = run_corrections(defs, instance, tick.run_requests)
    assert fault.fired == 1
    assert all(r.success for r in results), [step_errors(r) for r in results]
    assert_invariants(pg_dsn, when="after the faulty correction run")
    assert {s for (s,) in query(pg_dsn, "SELECT trading_state FROM profiles")} == {"active"}
    retry_until_clean(defs, instance, pg_dsn, tick.cursor)
    assert trading_state(pg_dsn) == fault_free_state
    assert_no_double_booking(pg_dsn)


# --- statement timeouts ------------------------------------------------------------------------

def test_statement_timeout_in_a_correction_is_recorded_and_the_next_cycle_applies_it(
        sim, pg_dsn, instance, fault_free_state):
    """The entry-fill handler waits (it has written the order and the slice) on a lock held by
    another session longer than the store's statement_timeout: PostgreSQL cancels it and rolls
    it back; the order is recorded as failed (escalated), the others are applied; the next
    cycle's correction applies it once."""
    defs = after_first_cycle(sim, pg_dsn, instance)
    tick = evaluate_correction_sensor(defs, instance)
    order = entry_order(pg_dsn)
    before = {o[2]: o for o in trading_state(pg_dsn)["orders"]}[order]
    short = impatient(defs, pg_dsn, statement_timeout_ms=1_000, lock_timeout_ms=30_000)
    with inject_fault(STATEMENT_TIMEOUT, ENTRY_FILL,
                      block_sql="LOCK TABLE public.capital_ledger IN EXCLUSIVE MODE") as fault:
        results = run_corrections(short, instance, tick.run_requests)
    assert fault.fired == 1 and isinstance(fault.errors[0], psycopg.errors.QueryCanceled)
    assert all(r.success for r in results)
    assert outcomes_of(results)[order]["status"] == "failed"
    ((handler, reason, error),) = failed_corrections(pg_dsn)
    assert handler == "reconcile_entry_fill" and "statement timeout" in error
    assert {o[2]: o for o in trading_state(pg_dsn)["orders"]}[order] == before  # rolled back
    assert "correction_refused" in escalated_reasons(defs, instance, pg_dsn)
    assert_invariants(pg_dsn, when="after the timed-out correction")

    retry_until_clean(defs, instance, pg_dsn, tick.cursor)
    assert trading_state(pg_dsn) == fault_free_state
    assert_no_double_booking(pg_dsn)
    assert healthy(pg_dsn)


def test_statement_timeout_in_the_snapshot_fails_the_cycle_loudly_and_the_next_one_succeeds(
        sim, pg_dsn, instance, fault_free_state):
    """The account snapshot waits on an ACCESS EXCLUSIVE lock on orders past the statement
    timeout: the cycle fails (no diff, nothing acted on), the failure sensor records it, health
    is unhealthy; the next cycle succeeds and health is healthy again."""
    plan = sim.load_scenario("lifecycle")
    plan.seed_database(pg_dsn)
    add_partitions(instance, plan)
    defs = make_defs(sim, pg_dsn)
    short = impatient(defs, pg_dsn, statement_timeout_ms=1_000, lock_timeout_ms=30_000)
    with inject_fault(STATEMENT_TIMEOUT, SNAPSHOT) as fault:
        failed = run_cycle(short, instance, "acct1")
    assert fault.fired == 1 and isinstance(fault.errors[0], psycopg.errors.QueryCanceled)
    assert not failed.success
    (error,) = step_errors(failed)
    assert "canceling statement due to statement timeout" in error
    assert "reconciliation_diff" not in {e.step_key for e in failed.get_step_success_events()}
    assert query(pg_dsn, "SELECT count(*) FROM recon.mismatches") == [(0,)]
    report_failed_cycle(defs, instance, failed)
    assert query(pg_dsn, "SELECT cycle_id, status FROM recon.cycles") == [(failed.run_id, "failed")]
    assert not healthy(pg_dsn)
    assert_invariants(pg_dsn, when="after the failed cycle")

    run_scheduled_cycles(defs, instance)
    assert_invariants(pg_dsn, when="after the good cycle")
    assert healthy(pg_dsn)
    tick = evaluate_correction_sensor(defs, instance)
    assert all(r.success for r in run_corrections(defs, instance, tick.run_requests))
    retry_until_clean(defs, instance, pg_dsn, tick.cursor)
    assert trading_state(pg_dsn) == fault_free_state
    assert_no_double_booking(pg_dsn)


# --- the database restarted mid-cycle ----------------------------------------------------------

PASSWORD = "s3cret-Db-Pw"


@pytest.fixture
def own_postgres():
    """A PostgreSQL of this test alone (the shared one must not be stopped), migrated; its DSN
    carries a password (the server trusts local connections, so it is never checked) that no
    error may show. Stopped by its pid at the end."""
    base = tempfile.mkdtemp(prefix="recon-fault-pg-")
    os.chmod(base, 0o755)
    server = LocalPostgres(os.path.join(base, "data"))
    try:
        server.start()
        create_api_roles(server)
        dsn = create_migrated_database(server, "recon").replace(
            f"{server.user}@", f"{server.user}:{PASSWORD}@")
        yield server, dsn
    finally:
        server.stop()
        assert server.process is None
        shutil.rmtree(base, ignore_errors=True)


def http_health(base):
    import json
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(base + "/internal/health", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_database_restarted_between_the_snapshot_and_the_record_fails_the_cycle_loudly(
        sim, own_postgres, instance, fault_free_state):
    """The database is stopped (by its pid) after the cycle read its snapshot and before it
    records the cycle: the cycle fails naming the database (no password), health answers 503 /
    unavailable while it is down; started again, the failure sensor records the failed cycle
    (unhealthy); the next cycle succeeds (healthy), the corrections follow, and the trading
    tables end as in a fault-free run."""
    server, dsn = own_postgres
    plan = sim.load_scenario("lifecycle")
    plan.seed_database(dsn)
    add_partitions(instance, plan)
    defs = make_defs(sim, dsn)
    seen_down = {}

    def stop(fault):
        pid = server.process.pid
        server.stop()
        assert server.process is None  # stop() waited for the postmaster (pid) to exit
        fault.pids.append(pid)
        with pytest.raises(HealthUnavailable) as down:
            load_state(dsn)
        with serving_health(dsn) as base:
            seen_down["http"] = http_health(base)
        seen_down["error"] = str(down.value)

    with inject_fault(HOOK, "recon_record_cycle", action=stop) as fault:
        failed = run_cycle(defs, instance, "acct1")
    # Stopped after this cycle's snapshot was read, before its record.
    assert fault.fired == 1 and SNAPSHOT in fault.calls[:fault.calls.index("recon_record_cycle")]
    assert PASSWORD not in seen_down["error"] and "127.0.0.1" in seen_down["error"]
    status, body = seen_down["http"]
    assert status == 503 and body["reconciliationLoopHealthy"] is False
    assert PASSWORD not in json_text(body)

    assert not failed.success
    (error,) = step_errors(failed)
    assert "cannot connect to the database at 127.0.0.1" in error
    assert PASSWORD not in error and PASSWORD not in json_text(
        [str(e) for e in instance.all_logs(failed.run_id)])

    server.start()  # the same data directory and port
    report_failed_cycle(defs, instance, failed)
    assert query(dsn, "SELECT cycle_id, status FROM recon.cycles") == [(failed.run_id, "failed")]
    assert query(dsn, "SELECT count(*) FROM recon.mismatches") == [(0,)]
    state = load_state(dsn).health
    assert state["reconciliationLoopHealthy"] is False
    assert_invariants(dsn, when="after the failed cycle")

    run_scheduled_cycles(defs, instance)
    assert_invariants(dsn, when="after the good cycle")
    with serving_health(dsn) as base:
        status, body = http_health(base)
    assert status == 200 and body["reconciliationLoopHealthy"] is True
    tick = evaluate_correction_sensor(defs, instance)
    assert all(r.success for r in run_corrections(defs, instance, tick.run_requests))
    retry_until_clean(defs, instance, dsn, tick.cursor)
    assert trading_state(dsn) == fault_free_state
    assert_no_double_booking(dsn)
    assert healthy(dsn)


def test_database_restarted_and_back_before_the_next_call_the_cycle_completes(
        sim, own_postgres, instance, fault_free_state):
    """Stopped and started again between the snapshot and the record: the store's kept
    connection is dead and replaced, the record goes through, the cycle succeeds."""
    server, dsn = own_postgres
    plan = sim.load_scenario("lifecycle")
    plan.seed_database(dsn)
    add_partitions(instance, plan)
    defs = make_defs(sim, dsn)

    def bounce(fault):
        server.stop()
        server.start()

    with inject_fault(HOOK, "recon_record_cycle", action=bounce) as fault:
        cycle = run_cycle(defs, instance, "acct1")
    assert fault.fired == 1 and cycle.success, step_errors(cycle)
    assert query(dsn, "SELECT status FROM recon.cycles WHERE cycle_id = %s",
                 (cycle.run_id,)) == [("succeeded",)]
    assert_invariants(dsn, when="after the bounced cycle")
    run_scheduled_cycles(defs, instance)
    tick = evaluate_correction_sensor(defs, instance)
    assert all(r.success for r in run_corrections(defs, instance, tick.run_requests))
    retry_until_clean(defs, instance, dsn, tick.cursor)
    assert trading_state(dsn) == fault_free_state
    assert_no_double_booking(dsn)
    assert healthy(dsn)


def json_text(value) -> str:
    import json
    return json.dumps(value, default=str)


# --- what counts as a lost connection ------------------------------------------------------------

def test_connection_lost_is_a_broken_connection_not_a_refusal_or_a_timeout(pg_dsn):
    """Only a connection that broke under a statement (its outcome unknown) is re-sent by
    call_under_lock; a timeout or a refusal is an answer, and a connection that could not be
    opened sent nothing."""
    store = PostgresStore(dsn=pg_dsn, statement_timeout_ms=200)
    with inject_fault(LOST_BEFORE, "recon_database_now") as fault, \
            pytest.raises(psycopg.OperationalError) as lost:
        store.call("recon_database_now")
    assert fault.fired == 1 and connection_lost(lost.value)  # AdminShutdown, 57P01
    with inject_fault(LOST_AFTER, "recon_database_now"), \
            pytest.raises(psycopg.OperationalError) as after:
        store.call("recon_database_now")
    assert connection_lost(after.value)  # no SQLSTATE: the answer never came
    with pytest.raises(psycopg.errors.QueryCanceled) as timeout:
        with store.connect() as conn:
            conn.execute("SELECT pg_sleep(2)")
    assert not connection_lost(timeout.value)
    with pytest.raises(DatabaseUnavailable) as down:
        PostgresStore(dsn="postgresql://u:hunter2pw@127.0.0.1:1/x", connect_timeout_s=2).call(
            "recon_database_now")
    assert not connection_lost(down.value) and "hunter2pw" not in str(down.value)
    assert store.call("recon_database_now") is not None  # the store recovered by itself
