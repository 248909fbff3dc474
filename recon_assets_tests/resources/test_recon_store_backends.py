"""ReconStore answers the same over both backends (issue 17): `PostgresStore` (psycopg) and
`SupabaseStore` (supabase-py over HTTP to the PostgREST stand-in, on the same real PostgreSQL;
PostgREST itself cannot be installed here, see recon_assets_tests/harness/postgrest_standin.py).
Every ReconStore method is one SQL function called through `call()`; this seeds one history with
the recording functions and reads it back through each backend, with the Python types the
callers rely on."""

import datetime as dt

import psycopg
import pytest

from recon_assets.core.escalation import MISMATCH_IDENTITY
from recon_assets.metrics.health import HealthUnavailable, load_state
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.recon_store import ESCALATION_COLUMNS, ReconStore
from recon_assets.resources.supabase_store import SupabaseStore, SupabaseStoreError
from recon_assets_tests.harness.postgrest_standin import PostgrestStandIn

pytestmark = pytest.mark.integration

SERVICE_KEY = "test-service-role-key-recon-store"
ANON_KEY = "test-anon-key-recon-store"
KINDS = ("missing_from_exchange", "status_drift")


def _seed(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) VALUES "
            "('alpha', 'acct1', 'ALP', 10000), ('beta', 'acct1', 'BET', 5000)")
        conn.execute(
            "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id,"
            " exchange_order_id, status, qty, filled_qty, price) VALUES "
            "('alpha', 't1', 'ENTRY', 'BTC/USDT:USDT', 'buy', 'rc.ALP.t1.E1', '9001', 'open',"
            " 2, 0.5, 100.25)")
    store = ReconStore(PostgresStore(dsn=dsn))
    store.record_cycle("c1", "acct1", "2026-12-01T00:00:00+00:00", [
        {"kind": "missing_from_exchange", "profile_id": "alpha", "symbol": "BTC/USDT:USDT",
         "client_order_id": "rc.ALP.t1.E1", "exchange_order_id": "9001", "trade_id": "t1",
         "notional_usd": "150.375"},
        {"kind": "qty_drift", "profile_id": "beta", "symbol": "ETH/USDT:USDT"}], {})
    store.record_cycle("c0", "acct1", "2026-11-30T23:59:00+00:00", [], {})
    store.record_failed_cycle("c2", "acct2", "the exchange timed out")
    store.record_lock_contention("alpha", "c1", 250, "reconciliation_lock", None)
    store.record_alert("k1", "persistent_mismatch", "acct1", "alpha", "drift on alpha",
                       {"cycles": 3}, "pending")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT public.recon_begin_reconciling('alpha', 'run-1')")


@pytest.fixture
def standin(pg_dsn):
    _seed(pg_dsn)
    # As PostgREST: each call runs as the key's role (service_role), so a grant the functions
    # need and the migrations do not give fails here.
    with PostgrestStandIn(pg_dsn, SERVICE_KEY, anon_key=ANON_KEY, switch_roles=True) as server:
        yield server


@pytest.fixture
def backends(pg_dsn, standin):
    return {"postgres": ReconStore(PostgresStore(dsn=pg_dsn)),
            "supabase": ReconStore(SupabaseStore(url=standin.url, service_key=SERVICE_KEY))}


def _reads(store: ReconStore) -> dict:
    history = store.escalation_history(runs=5)
    return {
        "created_at": store.created_at(),
        "latest": store.latest_succeeded_cycle("acct1"),
        "latest_c0": store.latest_succeeded_cycle("acct1", "c0"),
        "latest_none": store.latest_succeeded_cycle("acct9"),
        "actionable": store.actionable_mismatches("c1", "alpha", KINDS),
        "profiles": store.profiles_with_mismatches("c1", "acct1", ("missing_from_exchange",
                                                                   "qty_drift")),
        "succeeded": (store.cycle_succeeded("c1", "acct1"), store.cycle_succeeded("c2", "acct2")),
        "parity_state": store.parity_state("acct1", "c1"),
        "parity_history": store.parity_history([("alpha", "t1", 1)]),
        "parity_decisions": store.parity_decisions("c1", "alpha", "GO"),
        "parity_profiles": store.profiles_with_parity_decision("c1", "acct1", "GO"),
        "sessions": store.reconciling_sessions("acct1"),
        "owner": store.reconciling_owner("alpha"),
        "no_owner": store.reconciling_owner("beta"),
        "history": {name: frame.to_dict("records") for name, frame in history.items()},
        "history_columns": {name: list(frame.columns) for name, frame in history.items()},
        "alerts": store.alerts_to_deliver(),
    }


def _without_clock(reads: dict) -> dict:
    """The reads less what the database clock makes differ between two reads (ages, now)."""
    out = dict(reads)
    out["latest"] = {k: v for k, v in reads["latest"].items() if k != "age_s"}
    out["latest_c0"] = {k: v for k, v in reads["latest_c0"].items() if k != "age_s"}
    out["sessions"] = [{k: v for k, v in r.items() if k != "age_s"} for r in reads["sessions"]]
    out["owner"] = {k: v for k, v in reads["owner"].items() if k != "age_s"}
    out["alerts"] = [{k: v for k, v in r.items() if k != "now"} for r in reads["alerts"]]
    return out


def test_every_read_is_the_same_over_psycopg_and_over_the_data_api(backends):
    over_postgres = _reads(backends["postgres"])
    over_supabase = _reads(backends["supabase"])
    assert _without_clock(over_postgres) == _without_clock(over_supabase)

    reads = over_postgres
    assert isinstance(reads["created_at"], dt.datetime) and reads["created_at"].tzinfo
    assert reads["latest"]["cycle_id"] == "c0"  # the later of the two succeeded cycles
    assert isinstance(reads["latest"]["finished_at"], dt.datetime)
    assert reads["latest"]["age_s"] >= 0
    assert reads["latest_c0"]["cycle_id"] == "c0" and reads["latest_none"] is None
    (mismatch,) = reads["actionable"]
    assert (mismatch["client_order_id"], mismatch["qty"], mismatch["filled_qty"],
            mismatch["price"]) == ("rc.ALP.t1.E1", "2", "0.5", "100.25")  # exact text
    assert reads["profiles"] == ["alpha", "beta"]
    assert reads["succeeded"] == (True, False)
    assert reads["parity_state"] == {"streaks": {}, "clear_streaks": {},
                                     "quarantined": frozenset(), "approved": {},
                                     "backfill_go": frozenset(), "refusals": []}
    assert reads["parity_history"] == [] and reads["parity_decisions"] == []
    (session,) = reads["sessions"]
    assert (session["profile_id"], session["owner"]) == ("alpha", "run-1")
    assert isinstance(session["started_at"], dt.datetime)
    assert reads["owner"]["owner"] == "run-1" and reads["no_owner"] is None
    (alert,) = reads["alerts"]
    assert (alert["dedup_key"], alert["details"], alert["attempts"]) == ("k1", {"cycles": 3}, 0)
    assert isinstance(alert["now"], dt.datetime)


def test_escalation_history_has_the_columns_the_rules_read(backends):
    frames = backends["supabase"].escalation_history(runs=5)
    assert {name: list(f.columns) for name, f in frames.items()} == ESCALATION_COLUMNS
    assert ESCALATION_COLUMNS["mismatches"] == ["cycle_id", *MISMATCH_IDENTITY, "notional_usd"]
    assert sorted(frames["cycles"]["cycle_id"]) == ["c0", "c1"]
    assert str(frames["cycles"]["finished_at"].dtype).startswith("datetime64")
    found = frames["mismatches"].set_index("kind")
    assert found.loc["missing_from_exchange", "notional_usd"] == pytest.approx(150.375)
    assert found.loc["missing_from_exchange", "client_order_id"] == "rc.ALP.t1.E1"
    assert list(frames["failed"]["cycle_id"]) == ["c2"]
    assert list(frames["contention"]["waited_ms"]) == [250]
    assert list(frames["clean"]["cycle_id"]) == ["c0"]


def test_the_records_are_written_over_the_data_api(backends, pg_dsn):
    store = backends["supabase"]
    new_id = store.record_alert("k2", "lock_contention", "acct1", None, "waits", {}, "pending")
    assert isinstance(new_id, int)
    assert store.record_alert("k2", "lock_contention", "acct1", None, "waits", {}, "pending") \
        is None  # recorded once by its dedup key
    later = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    store.record_delivery_attempt(new_id, "pending", "HTTP 503", later)
    store.record_lock_contention("beta", "c1", 10_000, "row_lock", "beta")
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT attempts, delivery_error, next_attempt_at FROM recon.alerts "
                            "WHERE id = %s", (new_id,)).fetchone() == (1, "HTTP 503", later)
        assert conn.execute("SELECT count(*) FROM recon.lock_contention").fetchone()[0] == 2
    assert [a["dedup_key"] for a in store.alerts_to_deliver([new_id])] == ["k2"]
    assert [a["dedup_key"] for a in store.alerts_to_deliver()] == ["k1"]  # k2 is not due


def test_the_health_state_is_the_same_over_psycopg_and_over_the_data_api(pg_dsn, standin):
    def without_clock(health: dict) -> dict:
        return {**health, "checkedAt": None}

    over_postgres = load_state(pg_dsn).health
    over_supabase = load_state(SupabaseStore(url=standin.url, service_key=SERVICE_KEY)).health
    assert without_clock(over_postgres) == without_clock(over_supabase)
    assert over_postgres["reconciliationMismatchCount"] == 0  # c0, the latest success, is clean
    assert over_postgres["reconciliationLastRun"] is not None
    assert {a["account"]: a["lastCycleStatus"] for a in over_postgres["accounts"]} == {
        "acct1": "succeeded"}
    assert [p["profileId"] for p in over_postgres["profiles"]] == ["alpha", "beta"]
    assert over_postgres["checkedAt"].endswith("+00:00")


def test_a_wrong_service_key_is_a_clear_health_error_without_the_key(standin):
    wrong = "wrong-service-key-3c1d"
    with pytest.raises(HealthUnavailable) as error:
        load_state(SupabaseStore(url=standin.url, service_key=wrong))
    message = str(error.value)
    assert "refused the service key" in message and "RECON_SUPABASE_SERVICE_ROLE_KEY" in message
    assert wrong not in message and SERVICE_KEY not in message


def test_the_anon_key_can_call_no_recon_function_and_not_read_the_recon_schema(standin, pg_dsn):
    anon = SupabaseStore(url=standin.url, service_key=ANON_KEY)  # a valid key, the wrong role
    for function, params in (("recon_escalation_history", {
            "p_runs": 5, "p_succeeded": "succeeded", "p_failed": "failed", "p_applied": "applied"}),
            ("recon_reconcile_cancel", {"p_profile_id": "alpha", "p_cycle_id": "c1",
                                        "p_idempotency_key": "k", "p_client_order_id": "x"}),
            ("recon_record_alert", {"p_dedup_key": "x", "p_reason": "persistent_mismatch",
                                    "p_exchange_account": None, "p_profile_id": None,
                                    "p_summary": "s", "p_details": {},
                                    "p_delivery_status": "pending"})):
        with pytest.raises(SupabaseStoreError) as error:
            anon.call(function, params)
        message = str(error.value)
        assert "HTTP 401, code 42501" in message and "permission denied for function" in message
        assert ANON_KEY not in message and SERVICE_KEY not in message
    with psycopg.connect(pg_dsn) as conn:
        for role in ("anon", "authenticated"):
            assert conn.execute("SELECT has_schema_privilege(%s, 'recon', 'USAGE')",
                                (role,)).fetchone()[0] is False
        open_to_anon = conn.execute(
            "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace "
            "AND p.proname LIKE 'recon\\_%%' AND has_function_privilege('anon', p.oid, 'EXECUTE')"
        ).fetchall()
    assert open_to_anon == [("recon_profile_lock_key",)]  # a pure hash, for the trading bots


def test_the_health_server_serves_over_the_data_api(pg_dsn, standin):
    import json
    import threading
    import urllib.request

    from recon_assets.metrics.server import make_server

    server = make_server(SupabaseStore(url=standin.url, service_key=SERVICE_KEY), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/internal/health", timeout=10) as r:
            served = json.loads(r.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    expected = load_state(pg_dsn).health
    assert {**served, "checkedAt": None} == {**expected, "checkedAt": None}
    assert "reconciliation_state_up 1.0" in metrics


def test_a_schema_the_data_api_does_not_expose_is_a_clear_error(standin):
    store = SupabaseStore(url=standin.url, service_key=SERVICE_KEY, schema_name="recon")
    with pytest.raises(SupabaseStoreError) as error:
        store.call("recon_database_created_at")
    assert "HTTP 406, code PGRST106" in str(error.value) and SERVICE_KEY not in str(error.value)


# The project's own tables: the trading tables in public and every table of schema recon.
TRADING_TABLES = ("profiles", "orders", "positions", "trade_history", "applied_fills",
                  "capital_ledger")


def _data_api(url: str, key: str, schema: str = "public"):
    from supabase import ClientOptions, create_client

    return create_client(url, key, options=ClientOptions(schema=schema))


def test_supabase_s_public_keys_read_and_write_no_table(standin, pg_dsn):
    """Issue 38: with Supabase's default grants the anon key could read and write the trading
    tables through the Data API (no row-level security). Now every table of the project has
    row-level security with no policy for anon or authenticated, and their privileges are
    revoked: the anon key's reads and writes of each are refused, and the rows stay as they
    were; the service role (BYPASSRLS on Supabase) still reads them."""
    from postgrest.exceptions import APIError

    with psycopg.connect(pg_dsn) as conn:
        before = {t: conn.execute(f"SELECT count(*) FROM public.{t}").fetchone()[0]
                  for t in TRADING_TABLES}
        recon_tables = [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'recon'::regnamespace "
            "AND relkind IN ('r', 'p') ORDER BY relname")]
        first = dict(conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE "
            "table_schema = 'public' AND table_name = ANY(%s) AND ordinal_position = 1",
            (list(TRADING_TABLES),)).fetchall())
    anon = _data_api(standin.url, ANON_KEY)
    attempts = {  # each names a column the table has, so only a privilege can refuse it
        "select": lambda t: anon.table(t).select("*").execute(),
        "insert": lambda t: anon.table(t).insert({first[t]: "1"}).execute(),
        "update": lambda t: anon.table(t).update({first[t]: "1"}).eq(first[t], "1").execute(),
        "delete": lambda t: anon.table(t).delete().eq(first[t], "1").execute(),
    }
    for table in TRADING_TABLES:
        for verb, attempt in attempts.items():
            with pytest.raises(APIError) as refused:
                attempt(table)
            assert refused.value.code == "42501", (table, verb, refused.value)
    with psycopg.connect(pg_dsn) as conn:
        after = {t: conn.execute(f"SELECT count(*) FROM public.{t}").fetchone()[0]
                 for t in TRADING_TABLES}
        # And as the database sees it: row-level security on every project table, nothing
        # granted to the public roles, for the tables of schema recon as well.
        for role in ("anon", "authenticated"):
            granted = conn.execute(
                "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind IN ('r', 'p') "
                "AND (c.relnamespace = 'recon'::regnamespace OR (c.relnamespace = "
                "'public'::regnamespace AND c.relname = ANY(%s))) AND (has_table_privilege(%s, "
                "c.oid, 'SELECT') OR has_table_privilege(%s, c.oid, 'INSERT') OR "
                "has_table_privilege(%s, c.oid, 'UPDATE') OR has_table_privilege(%s, c.oid, "
                "'DELETE'))", (list(TRADING_TABLES), role, role, role, role)).fetchall()
            assert granted == [], (role, granted)
        without = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind IN ('r', 'p') "
            "AND NOT c.relrowsecurity AND (c.relnamespace = 'recon'::regnamespace OR "
            "(c.relnamespace = 'public'::regnamespace AND c.relname = ANY(%s)))",
            (list(TRADING_TABLES),)).fetchall()
        assert without == [], without
    assert after == before and before["profiles"] == 2 and len(recon_tables) > 20
    # A deployment that exposed schema recon by mistake: the anon key still reads none of it.
    with PostgrestStandIn(pg_dsn, SERVICE_KEY, schema="recon", anon_key=ANON_KEY,
                          switch_roles=True) as exposed:
        anon_recon = _data_api(exposed.url, ANON_KEY, schema="recon")
        for table in recon_tables:
            with pytest.raises(APIError) as refused:
                anon_recon.table(table).select("*").execute()
            assert refused.value.code == "42501", (table, refused.value)
    service = _data_api(standin.url, SERVICE_KEY)
    rows = service.table("profiles").select("*").execute().data
    assert sorted(r["id"] for r in rows) == ["alpha", "beta"]
