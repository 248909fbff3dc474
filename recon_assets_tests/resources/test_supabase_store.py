"""The supabase-py backend against the real PostgreSQL, through the PostgREST stand-in.

Both backends run against the same freshly migrated database: `PostgresStore` with psycopg,
`SupabaseStore` with supabase-py over real HTTP to `postgrest_standin` (PostgREST itself cannot
be installed here; see that module's docstring).
"""

import http.server
import socket
import threading

import dagster as dg
import psycopg
import pytest

from recon_assets.resources.database import PostgresStore, TradingStore
from recon_assets.resources.supabase_store import (
    SupabaseStore,
    SupabaseStoreError,
    SupabaseUnavailableError,
)
from recon_assets_tests.harness.postgrest_standin import PostgrestStandIn

pytestmark = pytest.mark.integration

SERVICE_KEY = "test-service-role-key-5f2c9e7a"


def _seed(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd,"
            " trading_state, pause_source, paused_at) VALUES "
            "('alpha', 'acct1', 'ALP', 10000, 'active', NULL, NULL),"
            "('beta', 'acct1', 'BET', 5000.50, 'paused', 'parity watchdog', '2026-01-02T03:04:05Z'),"
            "('gamma', 'acct2', 'GAM', 2000, 'active', NULL, NULL)")
        conn.execute(
            "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id,"
            " exchange_order_id, status, qty, filled_qty, price) VALUES "
            "('alpha', 't1', 'ENTRY', 'BTC/USDT:USDT', 'buy', 'rc.ALP.t1.E1', '9001', 'open', 2, 0.5, 100.25),"
            "('alpha', 't0', 'ENTRY', 'BTC/USDT:USDT', 'buy', 'rc.ALP.t0.E1', '9000', 'filled', 1, 1, 90),"
            "('beta', 't5', 'EXIT', 'ETH/USDT:USDT', 'sell', 'rc.BET.t5.X1', NULL, 'new', 0.125, 0, NULL),"
            "('gamma', 't9', 'ENTRY', 'ETH/USDT:USDT', 'buy', 'rc.GAM.t9.E1', '9100', 'open', 1, 0, 10)")
        conn.execute(
            "INSERT INTO trade_history (trade_id, slice_no, profile_id, symbol, side, entry_qty,"
            " exit_qty, entry_price) VALUES "
            "('t0', 1, 'alpha', 'BTC/USDT:USDT', 'long', 1, 0.25, 90),"
            "('t5', 1, 'beta', 'ETH/USDT:USDT', 'long', 0.125, 0, 3000),"
            "('t9', 1, 'gamma', 'ETH/USDT:USDT', 'long', 1, 0, 10)")
        conn.execute(
            "INSERT INTO positions (profile_id, symbol, side, qty, avg_price) VALUES "
            "('alpha', 'BTC/USDT:USDT', 'long', 0.75, 90),"
            "('beta', 'ETH/USDT:USDT', 'long', 0.125, 3000)")


# Correction-style SQL functions, created by the tests in their own database (the real correction
# functions belong to other migrations). One is idempotent by key, like every correction.
TEST_FUNCTIONS = """
CREATE FUNCTION public.test_cancel_order(p_client_order_id text, p_cycle_id text,
                                         p_evidence jsonb DEFAULT '{}'::jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_profile text;
    v_key text := 'reconcile_cancel:' || p_client_order_id;
BEGIN
    SELECT profile_id INTO v_profile FROM orders WHERE client_order_id = p_client_order_id;
    IF v_profile IS NULL THEN
        RAISE EXCEPTION 'unknown order %', p_client_order_id USING HINT = 'check the client order id';
    END IF;
    INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler,
                                   client_order_id, evidence)
    VALUES (v_key, p_cycle_id, v_profile, 'reconcile_cancel', p_client_order_id, p_evidence)
    ON CONFLICT (idempotency_key) DO NOTHING;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('applied', false, 'idempotency_key', v_key);
    END IF;
    UPDATE orders SET status = 'canceled', updated_at = now()
    WHERE client_order_id = p_client_order_id;
    RETURN jsonb_build_object('applied', true, 'idempotency_key', v_key);
END;
$$;

CREATE FUNCTION public.test_open_orders(p_profile text, p_min_qty numeric DEFAULT 0)
RETURNS TABLE (client_order_id text, qty numeric, is_entry boolean)
LANGUAGE sql STABLE AS $$
    SELECT o.client_order_id, o.qty, o.intent = 'ENTRY' FROM orders o
    WHERE o.profile_id = p_profile AND o.status IN ('new', 'open', 'partially_filled')
      AND o.qty >= p_min_qty
    ORDER BY o.client_order_id
$$;

CREATE FUNCTION public.test_touch(p_profile text) RETURNS void LANGUAGE sql AS $$
    UPDATE profiles SET updated_at = now() WHERE id = p_profile
$$;
"""


@pytest.fixture
def seeded_dsn(pg_dsn):
    _seed(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(TEST_FUNCTIONS)
    return pg_dsn


@pytest.fixture
def standin(seeded_dsn):
    with PostgrestStandIn(seeded_dsn, SERVICE_KEY) as server:
        yield server


@pytest.fixture
def backends(seeded_dsn, standin):
    return {"postgres": PostgresStore(dsn=seeded_dsn),
            "supabase": SupabaseStore(url=standin.url, service_key=SERVICE_KEY)}


def _without_read_at(snapshot: dict) -> dict:
    return {k: v for k, v in snapshot.items() if k != "read_at"}


def test_both_backends_satisfy_the_trading_store_protocol(backends):
    for store in backends.values():
        assert isinstance(store, TradingStore)


def test_both_backends_return_the_identical_snapshot(backends, standin):
    for account in ("acct1", "acct2", "no-such-account"):
        via_pg = backends["postgres"].snapshot_account(account)
        via_supabase = backends["supabase"].snapshot_account(account)
        assert via_pg["read_at"] and via_supabase["read_at"]
        assert _without_read_at(via_supabase) == _without_read_at(via_pg)
    assert standin.requests_served == 3

    snap = backends["supabase"].snapshot_account("acct1")
    assert [p["profile_id"] for p in snap["profiles"]] == ["alpha", "beta"]
    beta = snap["profiles"][1]
    assert beta["allocated_capital_usd"] == 5000.50
    assert (beta["trading_state"], beta["pause_source"]) == ("paused", "parity watchdog")
    assert [o["client_order_id"] for o in snap["orders"]] == [
        "rc.ALP.t0.E1", "rc.ALP.t1.E1", "rc.BET.t5.X1"]
    t1 = snap["orders"][1]
    assert (t1["qty"], t1["filled_qty"], t1["price"], t1["exchange_order_id"]) == (2, 0.5, 100.25, "9001")
    assert snap["orders"][2]["price"] is None
    assert [(s["profile_id"], s["qty"]) for s in snap["positions"]] == [
        ("alpha", 0.75), ("beta", 0.125)]
    assert [(t["trade_id"], t["virtual_open_qty"]) for t in snap["trade_slices"]] == [
        ("t0", 0.75), ("t5", 0.125)]
    empty = backends["supabase"].snapshot_account("no-such-account")
    assert _without_read_at(empty) == {"profiles": [], "orders": [], "positions": [], "trade_slices": []}


def test_call_applies_a_correction_once_through_either_backend(backends, seeded_dsn):
    evidence = {"exchange_status": "canceled", "probe": {"order_id": "9001", "filled": 0.5}}
    first = backends["supabase"].call(
        "test_cancel_order", {"p_client_order_id": "rc.ALP.t1.E1", "p_cycle_id": "run-1",
                              "p_evidence": evidence})
    assert first == {"applied": True, "idempotency_key": "reconcile_cancel:rc.ALP.t1.E1"}
    # The same correction again, through the other backend: nothing is applied twice.
    again = backends["postgres"].call(
        "test_cancel_order", {"p_client_order_id": "rc.ALP.t1.E1", "p_cycle_id": "run-2"})
    assert again == {"applied": False, "idempotency_key": "reconcile_cancel:rc.ALP.t1.E1"}
    second = backends["postgres"].call(
        "test_cancel_order", {"p_client_order_id": "rc.GAM.t9.E1", "p_cycle_id": "run-2"})
    assert second["applied"] is True

    with psycopg.connect(seeded_dsn) as conn:
        statuses = dict(conn.execute(
            "SELECT client_order_id, status FROM orders ORDER BY 1").fetchall())
        corrections = conn.execute(
            "SELECT cycle_id, client_order_id, evidence FROM recon.corrections ORDER BY id").fetchall()
    assert statuses == {"rc.ALP.t0.E1": "filled", "rc.ALP.t1.E1": "canceled",
                        "rc.BET.t5.X1": "new", "rc.GAM.t9.E1": "canceled"}
    assert corrections == [("run-1", "rc.ALP.t1.E1", evidence), ("run-2", "rc.GAM.t9.E1", {})]


def test_call_results_have_the_same_shape_on_both_backends(backends):
    cases = [
        ("test_open_orders", {"p_profile": "alpha"}),
        ("test_open_orders", {"p_profile": "beta", "p_min_qty": 0.1}),
        ("test_open_orders", {"p_profile": "nobody"}),
        ("test_touch", {"p_profile": "alpha"}),
        ("recon_snapshot_account", {"p_account": "acct2", "p_recent_hours": 1}),
    ]
    results = {name: [store.call(fn, params) for fn, params in cases]
               for name, store in backends.items()}
    results["supabase"][-1].pop("read_at")
    results["postgres"][-1].pop("read_at")
    assert results["supabase"] == results["postgres"]
    rows, beta_rows, none, void, snapshot = results["supabase"]
    assert rows == [{"client_order_id": "rc.ALP.t1.E1", "qty": 2, "is_entry": True}]
    assert beta_rows == [{"client_order_id": "rc.BET.t5.X1", "qty": 0.125, "is_entry": False}]
    assert none == [] and void is None
    assert [o["client_order_id"] for o in snapshot["orders"]] == ["rc.GAM.t9.E1"]


def test_sql_and_http_errors_are_clear_errors(backends):
    store = backends["supabase"]
    with pytest.raises(SupabaseStoreError, match=r"HTTP 400, code P0001\): unknown order nope"
                                                 r" \(hint: check the client order id\)"):
        store.call("test_cancel_order", {"p_client_order_id": "nope", "p_cycle_id": "run-1"})
    with pytest.raises(SupabaseStoreError, match=r"rpc no_such_function .* failed \(HTTP 404, "
                                                 r"code PGRST202\)"):
        store.call("no_such_function", {"x": 1})
    with pytest.raises(SupabaseStoreError, match=r"HTTP 400, code 22P02\).*numeric"):
        store.call("test_open_orders", {"p_profile": "alpha", "p_min_qty": "lots"})
    with pytest.raises(psycopg.errors.RaiseException, match="unknown order nope"):
        backends["postgres"].call("test_cancel_order", {"p_client_order_id": "nope", "p_cycle_id": "x"})


def test_a_wrong_service_key_is_a_clear_error_that_never_echoes_a_key(standin):
    wrong_key = "wrong-service-key-a81d44"
    store = SupabaseStore(url=standin.url, service_key=wrong_key)
    with pytest.raises(SupabaseStoreError) as caught:
        store.snapshot_account("acct1")
    error = caught.value
    assert "refused the service key (HTTP 401: Invalid API key)" in str(error)
    assert "RECON_SUPABASE_SERVICE_ROLE_KEY" in str(error)
    for text in (str(error), repr(error), repr(store), str(store), store.describe()):
        assert wrong_key not in text and SERVICE_KEY not in text
    assert error.__cause__ is None and error.__context__ is None


def test_the_standin_going_away_is_an_error_not_an_empty_snapshot(seeded_dsn):
    server = PostgrestStandIn(seeded_dsn, SERVICE_KEY).start()
    store = SupabaseStore(url=server.url, service_key=SERVICE_KEY, timeout_s=5)
    try:
        assert [p["profile_id"] for p in store.snapshot_account("acct1")["profiles"]] == ["alpha", "beta"]
    finally:
        server.stop()
    with pytest.raises(SupabaseUnavailableError, match=r"rpc recon_snapshot_account at supabase "
                                                       r"http://127\.0\.0\.1:\d+: cannot reach") as caught:
        store.snapshot_account("acct1")
    assert isinstance(caught.value, ConnectionError)
    assert SERVICE_KEY not in str(caught.value)
    with pytest.raises(SupabaseUnavailableError):
        store.call("test_touch", {"p_profile": "alpha"})


def test_a_database_down_behind_the_data_api_is_an_error(pg_server):
    # A stand-in whose database is gone: PostgREST answers 503, never an empty result.
    dead_dsn = pg_server.dsn("database_that_does_not_exist")
    with PostgrestStandIn(dead_dsn, SERVICE_KEY) as server:
        store = SupabaseStore(url=server.url, service_key=SERVICE_KEY)
        with pytest.raises(SupabaseStoreError, match=r"HTTP 503, code PGRST000"):
            store.snapshot_account("acct1")


def test_a_malformed_snapshot_is_rejected(seeded_dsn, standin):
    with psycopg.connect(seeded_dsn) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION public.recon_snapshot_account("
                     "p_account text, p_recent_hours integer DEFAULT 24) RETURNS jsonb "
                     "LANGUAGE sql AS $$ SELECT jsonb_build_object('profiles', '[]'::jsonb) $$")
    store = SupabaseStore(url=standin.url, service_key=SERVICE_KEY)
    with pytest.raises(SupabaseStoreError, match="malformed snapshot for account 'acct1'"):
        store.snapshot_account("acct1")


def test_inside_dagster_the_key_comes_from_envvar_and_stays_out_of_events(
        monkeypatch, standin):
    monkeypatch.setenv("RECON_SUPABASE_URL", standin.url)
    monkeypatch.setenv("RECON_SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)

    @dg.asset
    def profile_count(context: dg.AssetExecutionContext, database: SupabaseStore) -> dg.Output:
        snapshot = database.snapshot_account("acct1")
        context.log.info(f"read {database.describe()} ({database!r})")
        return dg.Output(len(snapshot["profiles"]), metadata={"source": database.describe()})

    store = SupabaseStore(url=dg.EnvVar("RECON_SUPABASE_URL"), service_key=dg.EnvVar("RECON_SUPABASE_SERVICE_ROLE_KEY"))
    with dg.instance_for_test() as instance:
        result = dg.materialize([profile_count], resources={"database": store}, instance=instance)
        assert result.success
        assert result.output_for_node("profile_count") == 2
        records = instance.get_records_for_run(result.run_id).records
        texts = [repr(r.event_log_entry) for r in records]
    assert any(f"supabase {standin.url}" in t for t in texts)
    assert not any(SERVICE_KEY in t for t in texts)


def test_a_migrated_correction_function_runs_alike_through_both_backends(backends, seeded_dsn):
    # recon_recalculate_capital (migration 0005) takes the profile's transaction-scoped advisory
    # lock, which works through PostgREST because each rpc() is one transaction.
    via_supabase = backends["supabase"].call("recon_recalculate_capital", {"p_profile_id": "alpha"})
    via_pg = backends["postgres"].call("recon_recalculate_capital", {"p_profile_id": "alpha"})
    assert via_supabase == via_pg
    with psycopg.connect(seeded_dsn) as conn:
        ledger = conn.execute("SELECT trade_id, reserved_usd::float8 FROM capital_ledger"
                              " WHERE profile_id = 'alpha'").fetchall()
    assert ledger == [("t0", 0.75 * 90)]


class _ProxyPage(http.server.BaseHTTPRequestHandler):
    """What sits in front of PostgREST when things go wrong: an HTML page, 200 or 502."""

    status = 200

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><body>maintenance</body></html>"
        self.send_response(self.status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("status, message", [
    (200, r"answer is not JSON \(HTTP 200, content type 'text/html'\)"),
    (502, r"failed \(HTTP 502\): Bad Gateway"),
])
def test_a_non_postgrest_answer_is_an_error_not_a_snapshot(status, message):
    handler = type("Page", (_ProxyPage,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        store = SupabaseStore(url=f"http://127.0.0.1:{server.server_address[1]}",
                              service_key=SERVICE_KEY)
        with pytest.raises(SupabaseStoreError, match=message):
            store.snapshot_account("acct1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_data_api_that_never_answers_is_a_timeout_error():
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        store = SupabaseStore(url=f"http://127.0.0.1:{listener.getsockname()[1]}",
                              service_key=SERVICE_KEY, timeout_s=0.5)
        with pytest.raises(SupabaseUnavailableError, match=r"no answer within 0\.5s"):
            store.snapshot_account("acct1")
