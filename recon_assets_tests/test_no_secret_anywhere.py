"""No secret anywhere: with known secrets configured the way a deployment configures them
(environment variables read through `EnvVar`: a database password, an API key and secret per
exchange account, a webhook URL), a cycle, its corrections (one with a failing probe, whose ccxt
error quotes the signed request) and the escalation sensor run; then everything the project
wrote or served is searched for the secrets: the terminal (stdout/stderr), every file of the
Dagster instance (run and event storage with their metadata, compute logs), every row of the
`recon` and trading tables, `/internal/health` and `/metrics` (both also when the database is
unreachable); each place is checked to hold what it must (no place counts as searched empty). The UI pages are read from the same storage (the browser test is separate)."""

import json
import pathlib
import re

import dagster as dg
import psycopg
import pytest
from prometheus_client import generate_latest

from recon_assets.definitions import build_defs
from recon_assets.metrics.health import HealthUnavailable, load_state, unavailable_health
from recon_assets.metrics.server import build_registry
from recon_assets.resources.alerts import AlertWebhook
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.exchange import ExchangeResource
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets.settings import ReconSettings
from recon_assets_tests.harness.dagster_flow import (WATCHDOG_OUT_OF_THE_WAY, add_partitions,
                                                     evaluate_correction_sensor, run_corrections,
                                                     run_scheduled_cycles)
from recon_assets_tests.harness.exchange import FAST_RETRIES
from recon_assets_tests.harness.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

DB_PASSWORD = "dbPw-4q7Zr9"
KEYS = {"acct1": ("apiKeyXk29Lm7Q", "apiSecretPq83Vn"), "acct2": ("apiKeyTz51Hd2W", "apiSecretWc64Bs")}


def _texts_of_tables(dsn):
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', table_schema, table_name) FROM information_schema.tables "
            "WHERE table_schema IN ('recon', 'public') AND table_type = 'BASE TABLE'").fetchall()
        for (table,) in tables:
            for (row,) in conn.execute(f"SELECT to_jsonb(t)::text FROM {table} t").fetchall():
                yield f"table {table}", row


def _files_of(root: pathlib.Path):
    for path in root.rglob("*"):
        if path.is_file():
            yield f"file {path.relative_to(root)}", path.read_bytes().decode("utf-8", "replace")


def test_no_secret_in_anything_the_project_writes_or_serves(sim, pg_dsn, pg_server, monkeypatch,
                                                            capfd, tmp_path):
    dbname = pg_dsn.rsplit("/", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE recon_app LOGIN SUPERUSER PASSWORD '{DB_PASSWORD}'")
    secret_dsn = f"postgresql://recon_app:{DB_PASSWORD}@127.0.0.1:{pg_server.port}/{dbname}"
    plan = sim.load_scenario("lifecycle")
    plan.seed_database(pg_dsn)
    for account, (key, secret) in KEYS.items():
        sim.exchange.accounts[account].api_key, sim.exchange.accounts[account].secret = key, secret

    with WebhookReceiver() as webhook:
        env = {"RECON_DATABASE_URL": secret_dsn, "RECON_ALERT_WEBHOOK_URL": webhook.url,
               "RECON_EXCHANGE_API_BASE_URL": sim.url,
               "RECON_EXCHANGE_CREDENTIALS": json.dumps(
                   {a: {"apiKey": k, "secret": s} for a, (k, s) in KEYS.items()})}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        store = PostgresStore(dsn=dg.EnvVar("RECON_DATABASE_URL"))
        defs = build_defs({
            "settings": ReconSettings(**WATCHDOG_OUT_OF_THE_WAY), "database": store,
            "io_manager": PostgresFrameIOManager(database=store),
            "alert_webhook": AlertWebhook(url=dg.EnvVar("RECON_ALERT_WEBHOOK_URL")),
            "exchange": ExchangeResource(credentials=dg.EnvVar("RECON_EXCHANGE_CREDENTIALS"),
                                         api_base_url=dg.EnvVar("RECON_EXCHANGE_API_BASE_URL"),
                                         max_attempts=2, **FAST_RETRIES)})
        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("")
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            add_partitions(instance, plan)
            run_scheduled_cycles(defs, instance)
            # Every probe of an order fails with 5xx: ccxt's error quotes the signed request.
            sim.exchange.inject_fault("server_error", path="/fapi/v1/order", method="GET",
                                      count=None)
            corrections = run_corrections(defs, instance,
                                          evaluate_correction_sensor(defs, instance).run_requests)
            assert corrections, "the lifecycle scenario has corrections to try"
            details = [o["detail"] for r in corrections if r.success
                       for o in r.output_for_node("correct_profile")["outcomes"]]
            assert any("signature=<redacted>" in d for d in details), details  # the probe failed
            # The mismatches the failed probes left are there a second cycle: escalated.
            run_scheduled_cycles(defs, instance, expect_success=False)
            with dg.build_sensor_context(instance=instance, resources={
                    "database": store, "alert_webhook": AlertWebhook(
                        url=dg.EnvVar("RECON_ALERT_WEBHOOK_URL"))}) as context:
                defs.get_sensor_def("escalation_sensor")(context)
            assert webhook.posts, "the escalation sensor posted its alerts"
            events = [str(e) for run in instance.get_runs() for e in instance.all_logs(run.run_id)]
        served = [("health", json.dumps(load_state(secret_dsn).health)),
                  ("metrics", generate_latest(build_registry(secret_dsn)).decode())]
        # The database down, and its URL mistyped (psycopg quotes a malformed one whole).
        for broken in (secret_dsn.replace(f":{pg_server.port}/", ":1/"),
                       secret_dsn.replace("postgresql://", "postgresql//")):
            with pytest.raises(HealthUnavailable) as down:
                load_state(broken)
            served.append(("health when down", json.dumps(unavailable_health(str(down.value)))))
            served.append(("metrics when down",
                           generate_latest(build_registry(broken)).decode()))
        out, err = capfd.readouterr()
        everything = [("stdout", out), ("stderr", err), *served,
                      *(("event", e) for e in events), *_files_of(home),
                      *_texts_of_tables(pg_dsn)]
        secrets = [DB_PASSWORD, webhook.url, "secret-token",
                   *(s for pair in KEYS.values() for s in pair)]
        leaks = [(where, secret) for where, text in everything for secret in secrets
                 if secret in text]
        assert not leaks, leaks[:10]
        signed = [where for where, text in everything if re.search(r"signature=[0-9a-f]{16}", text)]
        assert not signed, signed[:10]
        # The search saw what it had to, each place with what makes it worth searching: the
        # cycles' and corrections' events, the instance's files, the rows the flow wrote, the
        # health and metrics read from the database, and both answers when it is down.
        texts: dict[str, list[str]] = {}
        for where, text in everything:
            texts.setdefault(where.split(" ")[0] if where.split(" ")[0] in (
                "event", "file", "table") else where, []).append(text)
        assert sum("correct_profile" in e for e in texts["event"]) >= 1
        assert sum("STEP_SUCCESS" in e or "step_success" in e.lower() for e in texts["event"]) > 5
        assert len(texts["file"]) >= 1 and len(texts["table"]) >= 10
        assert any("reconcile_" in t for t in texts["table"])  # the corrections' rows
        assert '"reconciliationLoopHealthy"' in texts["health"][0]
        assert "reconciliation_mismatch_total" in texts["metrics"][0]
        assert len(texts["health when down"]) == 2 and all(
            '"reconciliationLoopHealthy": false' in t for t in texts["health when down"])
        assert len(texts["metrics when down"]) == 2 and all(
            "reconciliation_state_up 0.0" in t for t in texts["metrics when down"])
        assert texts["stderr"][0] or texts["stdout"][0]  # the runs logged to the terminal
