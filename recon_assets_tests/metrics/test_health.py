"""`recon health`: /internal/health and /metrics over real HTTP, from state in the real Postgres."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recon_assets.local_postgres import free_port
from recon_assets.metrics.health import RUNBOOK_FIELDS
from recon_assets.metrics.server import main as health_main
from recon_assets.metrics.server import make_server
from recon_assets_tests.harness.postgres import serving_health

pytestmark = pytest.mark.integration

# Cycles, relative to the database clock. acct1: an older succeeded cycle c1, then the latest
# succeeded c2 (10 s ago), then a cycle still running. acct2: succeeded c3 (20 s ago).
SEED = """
INSERT INTO recon.cycles (cycle_id, exchange_account, started_at, finished_at, status, mismatch_count) VALUES
  ('c1', 'acct1', now() - interval '70 s', now() - interval '60 s', 'succeeded', 4),
  ('c2', 'acct1', now() - interval '15 s', now() - interval '10 s', 'succeeded', 7),
  ('c4', 'acct1', now() - interval '1 s', NULL, 'running', NULL),
  ('c3', 'acct2', now() - interval '25 s', now() - interval '20 s', 'succeeded', 2);
INSERT INTO recon.mismatches (cycle_id, kind, profile_id, exchange_account, trade_id, notional_usd) VALUES
  ('c1', 'missing_from_exchange', 'alpha', 'acct1', NULL, 10),
  ('c1', 'missing_from_exchange', 'alpha', 'acct1', NULL, 20),
  ('c1', 'missing_in_db', NULL, 'acct1', NULL, 5),
  ('c1', 'ghost_slice', 'alpha', 'acct1', 't7', 999),
  ('c2', 'missing_from_exchange', 'alpha', 'acct1', NULL, 10),
  ('c2', 'missing_from_exchange', 'beta', 'acct1', NULL, 30),
  ('c2', 'missing_in_db', 'beta', 'acct1', NULL, 7),
  ('c2', 'qty_drift', 'alpha', 'acct1', 't1', 3),
  ('c2', 'ghost_slice', 'alpha', 'acct1', 't1', 100),
  ('c2', 'ghost_slice', 'alpha', 'acct1', 't1', 250.5),
  ('c2', 'ghost_slice', 'beta', 'acct1', 't2', 50),
  ('c3', 'missing_in_db', NULL, 'acct2', NULL, 12),
  ('c3', 'ghost_slice', 'gamma', 'acct2', 't9', 400),
  -- the same cycle id on another account is not acct1's finding
  ('c2', 'missing_in_db', NULL, 'acct9', NULL, 1);
-- The parity heartbeat's checks of the same cycles: its ghosts are the runtime parity fields.
INSERT INTO recon.parity_checks (cycle_id, exchange_account, profile_id, trade_id, slice_no, symbol,
                                 side, virtual_open_qty, mismatch_notional_usd, attributable, ghost,
                                 confirmations_required, decision, reason) VALUES
  ('c1', 'acct1', 'alpha', 't7', 1, 'BTC/USDT:USDT', 'long', 1, 999, true, true, 3, 'confirming', 'r'),
  ('c2', 'acct1', 'alpha', 't1', 1, 'BTC/USDT:USDT', 'long', 1, 100, true, true, 3, 'confirming', 'r'),
  ('c2', 'acct1', 'alpha', 't1', 2, 'BTC/USDT:USDT', 'long', 1, 250.5, true, true, 3, 'quarantine', 'r'),
  ('c2', 'acct1', 'beta', 't2', 1, 'ETH/USDT:USDT', 'short', 1, 50, false, true, 3, 'quarantine', 'r'),
  ('c2', 'acct1', 'beta', 't3', 1, 'ETH/USDT:USDT', 'short', 1, 0, true, false, 3, 'cleared', 'r'),
  ('c3', 'acct2', 'gamma', 't9', 1, 'SOL/USDT:USDT', 'long', 1, 400, true, true, 3, 'confirming', 'r');
INSERT INTO recon.quarantine (profile_id, trade_id, slice_no, reason, cycle_id, released_at) VALUES
  ('alpha', 't1', 1, 'no sub-tag attribution', 'c2', NULL),
  ('beta', 't2', 1, 'no sub-tag attribution', 'c2', NULL),
  ('alpha', 't0', 1, 'no sub-tag attribution', 'c1', now());
INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id, dry_run) VALUES
  ('k1', 'c1', 'alpha', 'synthetic_exit', 't7', false),
  ('k2', 'c2', 'alpha', 'synthetic_exit', 't1', true),
  ('k3', 'c2', 'beta', 'reconcile_cancel', 't2', false);
-- The trading gate: beta paused by the watchdog 5 minutes ago (auto-resume held back until 10
-- minutes from now), gamma paused by an operator, alpha active.
INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd, trading_state,
                      pause_source, paused_at) VALUES
  ('alpha', 'acct1', 'ALP', 20000, 'active', NULL, NULL),
  ('beta', 'acct1', 'BET', 10000, 'paused', 'parity_watchdog', now() - interval '5 minutes'),
  ('gamma', 'acct2', 'GAM', 5000, 'paused', 'operator', now() - interval '1 hour');
INSERT INTO recon.watchdog_state (profile_id, mismatch_notional_usd, threshold_usd,
                                  resume_held_back_by, resume_earliest_at) VALUES
  ('alpha', 0, 100, NULL, NULL),
  ('beta', 80, 50, ARRAY['min_pause', 'clean_streak'], now() + interval '10 minutes'),
  ('gamma', 0, 25, ARRAY['pause_source'], NULL);
"""

EXPECTED_HEALTH = {
    "reconciliationLoopHealthy": True,
    "reconciliationMismatchCount": 7 + 2,
    "reconciliationMissingFromExchange": 2,
    "reconciliationMissingInDb": 1 + 1,
    "reconciliationParityMismatchTrades": 2 + 1,
    "reconciliationParityQuarantinedTrades": 2,
    "reconciliationParityAutoClosedTrades": 1,
    "reconciliationParityMaxMismatchNotionalUsd": 400.0,
    "reconciliationParityTotalMismatchNotionalUsd": 100 + 250.5 + 50 + 400,
    "reconciliationIntegrityWatchdogTriggered": True,
}

EXPECTED_METRICS = {
    # counters: every finding ever recorded (c1 + c2 + c3 + the acct9 row)
    "reconciliation_mismatch_total": 4 + 7 + 2 + 1,
    "reconciliation_missing_from_exchange_total": 2 + 2,
    "reconciliation_missing_in_db_total": 1 + 1 + 1 + 1,
    # gauges: the runtime fields
    "reconciliation_state_up": 1,
    "reconciliation_loop_healthy": 1,
    "reconciliation_mismatch_count": 9,
    "reconciliation_missing_from_exchange_count": 2,
    "reconciliation_missing_in_db_count": 2,
    "reconciliation_parity_mismatch_trades": 3,
    "reconciliation_parity_quarantined_trades": 2,
    "reconciliation_parity_auto_closed_trades": 1,
    "reconciliation_parity_max_mismatch_notional_usd": 400.0,
    "reconciliation_parity_total_mismatch_notional_usd": 800.5,
    "reconciliation_integrity_watchdog_triggered": 1,
}


def _execute(dsn: str, statements: str, params=None) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(statements, params)


@pytest.fixture
def seeded_dsn(pg_dsn):
    _execute(pg_dsn, SEED)
    return pg_dsn


def serving(dsn: str, stale_after_s: float = 300):
    return serving_health(dsn, stale_after_s=stale_after_s)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def health(base: str) -> tuple[int, dict]:
    status, content_type, body = get(base + "/internal/health")
    assert content_type == "application/json"
    return status, json.loads(body)


def metrics(base: str) -> dict[str, float]:
    """Sample name -> value of the unlabelled samples, after checking each family's type."""
    status, content_type, body = get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name == family.name + "_total"
            if not sample.labels:
                samples[sample.name] = sample.value
        samples.setdefault("_types", {})[family.name] = family.type
    return samples


def labelled_samples(body: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value of the labelled samples."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body) for sample in family.samples
            if sample.labels}


def test_health_and_metrics_report_the_persisted_state_with_the_runbook_names(seeded_dsn):
    with serving(seeded_dsn) as base:
        status, body = health(base)
        scraped = metrics(base)
        scraped_text = get(base + "/metrics")[2]
    assert status == 200
    assert set(RUNBOOK_FIELDS) <= set(body)
    assert {k: body[k] for k in EXPECTED_HEALTH} == EXPECTED_HEALTH
    with psycopg.connect(seeded_dsn) as conn:
        c2_finished = conn.execute("SELECT finished_at FROM recon.cycles WHERE cycle_id = 'c2'"
                                   ).fetchone()[0]
    assert body["reconciliationLastRun"] == c2_finished.astimezone(timezone.utc).isoformat()
    assert [(a["account"], a["healthy"], a["lastSucceededCycleId"]) for a in body["accounts"]] == [
        ("acct1", True, "c2"), ("acct2", True, "c3")]

    types = scraped.pop("_types")
    assert {k: scraped[k] for k in EXPECTED_METRICS} == EXPECTED_METRICS
    assert scraped["reconciliation_last_run_timestamp_seconds"] == c2_finished.timestamp()
    assert types["reconciliation_mismatch"] == "counter"
    assert types["reconciliation_missing_from_exchange"] == "counter"
    assert types["reconciliation_missing_in_db"] == "counter"
    assert types["reconciliation_parity_mismatch_trades"] == "gauge"
    assert types["reconciliation_integrity_watchdog_triggered"] == "gauge"

    # The trading gate of every profile, in the body and as labelled gauges.
    gates = {p["profileId"]: p for p in body["profiles"]}
    assert {p: (g["tradingState"], g["pauseSource"], g["watchdogTriggered"])
            for p, g in gates.items()} == {"alpha": ("active", None, False),
                                           "beta": ("paused", "parity_watchdog", True),
                                           "gamma": ("paused", "operator", False)}
    assert gates["beta"]["autoResumeHeldBackBy"] == ["min_pause", "clean_streak"]
    assert gates["beta"]["autoResumeEarliestAt"] is not None and gates["beta"]["pausedAt"]
    assert gates["gamma"]["autoResumeEarliestAt"] is None
    assert (gates["beta"]["mismatchNotionalUsd"], gates["beta"]["thresholdUsd"]) == (80.0, 50.0)
    labelled = labelled_samples(scraped_text)
    assert labelled[("reconciliation_profile_trading_state",
                     (("account", "acct1"), ("profile", "beta"), ("state", "paused")))] == 1
    assert labelled[("reconciliation_profile_trading_state",
                     (("account", "acct1"), ("profile", "beta"), ("state", "active")))] == 0
    assert labelled[("reconciliation_profile_watchdog_triggered",
                     (("account", "acct1"), ("profile", "beta")))] == 1
    assert labelled[("reconciliation_profile_auto_resume_earliest_timestamp_seconds",
                     (("account", "acct1"), ("profile", "beta")))] == pytest.approx(
        datetime.fromisoformat(gates["beta"]["autoResumeEarliestAt"]).timestamp())
    assert ("reconciliation_profile_auto_resume_earliest_timestamp_seconds",
            (("account", "acct2"), ("profile", "gamma"))) not in labelled
    assert labelled[("reconciliation_profile_paused_since_timestamp_seconds",
                     (("account", "acct2"), ("pause_source", "operator"), ("profile", "gamma")))] > 0


def test_a_restarted_server_reports_the_same_numbers_and_counters_only_grow(seeded_dsn):
    with serving(seeded_dsn) as base:
        first_health, first_metrics = health(base)[1], metrics(base)
    with serving(seeded_dsn) as base:
        again_health, again_metrics = health(base)[1], metrics(base)
        for body in (first_health, again_health):
            body.pop("checkedAt")
        assert again_health == first_health
        assert again_metrics == first_metrics

        # A new cycle on acct2 with one finding: current counts follow the latest cycle, the
        # counters add it to the history.
        _execute(seeded_dsn, """
            INSERT INTO recon.cycles (cycle_id, exchange_account, started_at, finished_at, status)
            VALUES ('c5', 'acct2', now() - interval '2 s', now() - interval '1 s', 'succeeded');
            INSERT INTO recon.mismatches (cycle_id, kind, exchange_account, notional_usd)
            VALUES ('c5', 'missing_from_exchange', 'acct2', 8)""")
        later_health, later_metrics = health(base)[1], metrics(base)
    assert later_health["reconciliationMismatchCount"] == 7 + 1
    assert later_health["reconciliationMissingFromExchange"] == 2 + 1
    assert later_health["reconciliationMissingInDb"] == 1
    assert later_health["reconciliationParityMaxMismatchNotionalUsd"] == 250.5
    assert later_metrics["reconciliation_mismatch_total"] == first_metrics["reconciliation_mismatch_total"] + 1
    assert later_metrics["reconciliation_missing_from_exchange_total"] == 4 + 1
    assert later_metrics["reconciliation_missing_in_db_total"] == 4


def test_a_stale_last_success_makes_the_loop_unhealthy(pg_dsn):
    _execute(pg_dsn, """
        INSERT INTO recon.cycles (cycle_id, exchange_account, started_at, finished_at, status)
        VALUES ('old', 'acct1', now() - interval '410 s', now() - interval '400 s', 'succeeded');
        INSERT INTO recon.mismatches (cycle_id, kind, exchange_account) VALUES
            ('old', 'missing_in_db', 'acct1')""")
    with serving(pg_dsn, stale_after_s=300) as base:
        status, body = health(base)
        scraped = metrics(base)
    assert status == 200
    assert body["reconciliationLoopHealthy"] is False
    assert body["accounts"][0]["reason"].startswith("last succeeded cycle finished 4")
    assert body["reconciliationMissingInDb"] == 1  # still the latest succeeded cycle's findings
    assert scraped["reconciliation_loop_healthy"] == 0
    assert scraped["reconciliation_missing_in_db_count"] == 1
    with serving(pg_dsn, stale_after_s=600) as base:
        assert health(base)[1]["reconciliationLoopHealthy"] is True


def test_a_failed_last_cycle_makes_the_loop_unhealthy(seeded_dsn):
    _execute(seeded_dsn, """
        INSERT INTO recon.cycles (cycle_id, exchange_account, started_at, finished_at, status, error)
        VALUES ('c6', 'acct2', now() - interval '3 s', now() - interval '2 s', 'failed',
                'exchange answered 503')""")
    with serving(seeded_dsn) as base:
        status, body = health(base)
        scraped = metrics(base)
    assert status == 200
    assert body["reconciliationLoopHealthy"] is False
    acct2 = body["accounts"][1]
    assert (acct2["account"], acct2["healthy"], acct2["reason"]) == (
        "acct2", False, "last cycle c6 failed")
    assert body["accounts"][0]["healthy"] is True
    # The counts still come from each account's latest succeeded cycle.
    assert {k: body[k] for k in EXPECTED_HEALTH if k != "reconciliationLoopHealthy"} == {
        k: v for k, v in EXPECTED_HEALTH.items() if k != "reconciliationLoopHealthy"}
    with psycopg.connect(seeded_dsn) as conn:
        c6_finished = conn.execute("SELECT finished_at FROM recon.cycles WHERE cycle_id = 'c6'"
                                   ).fetchone()[0]
    assert scraped["reconciliation_last_run_timestamp_seconds"] == c6_finished.timestamp()
    assert scraped["reconciliation_loop_healthy"] == 0


def test_no_cycle_at_all_is_unhealthy_with_zero_counts(pg_dsn):
    with serving(pg_dsn) as base:
        status, body = health(base)
        scraped = metrics(base)
    assert status == 200
    assert body["reconciliationLoopHealthy"] is False
    assert body["reconciliationLastRun"] is None
    assert body["reconciliationMismatchCount"] == 0
    assert body["reconciliationIntegrityWatchdogTriggered"] is False
    assert scraped["reconciliation_mismatch_total"] == 0
    assert scraped["reconciliation_loop_healthy"] == 0
    assert "reconciliation_last_run_timestamp_seconds" not in scraped


def test_an_account_with_profiles_but_no_cycle_makes_the_loop_unhealthy(seeded_dsn):
    # The seed's profiles are on acct1 and acct2, which have cycles.
    with serving(seeded_dsn) as base:
        assert health(base)[1]["reconciliationLoopHealthy"] is True
        _execute(seeded_dsn, "INSERT INTO profiles (id, exchange_account, sub_tag,"
                             " allocated_capital_usd) VALUES ('delta', 'acct3', 'DEL', 1000)")
        body = health(base)[1]
        assert body["reconciliationLoopHealthy"] is False
        assert [(a["account"], a["reason"]) for a in body["accounts"]] == [
            ("acct1", None), ("acct2", None), ("acct3", "no finished reconciliation cycle")]
        status, _type, text = get(base + "/metrics")
    per_account = {s.labels["account"]: s.value for f in text_string_to_metric_families(text)
                   if f.name == "reconciliation_account_loop_healthy" for s in f.samples}
    assert per_account == {"acct1": 1, "acct2": 1, "acct3": 0}


def test_a_database_that_is_down_gives_503_without_the_password():
    dsn = f"postgresql://recon_user:hunter2-s3cret@127.0.0.1:{free_port()}/postgres"
    with serving(dsn) as base:
        status, body = health(base)
        metrics_status, _type, text = get(base + "/metrics")
    assert status == 503
    assert body["reconciliationLoopHealthy"] is False
    assert body["error"].startswith("cannot connect to the database at 127.0.0.1:")
    assert body["error"].endswith("/postgres: connection refused")
    assert set(RUNBOOK_FIELDS) <= set(body) and body["reconciliationMismatchCount"] is None
    assert "hunter2-s3cret" not in json.dumps(body) and "recon_user" not in json.dumps(body)
    assert metrics_status == 200 and "hunter2" not in text
    scraped = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert scraped == {"reconciliation_state_up": 0, "reconciliation_loop_healthy": 0}


def test_recon_health_without_a_database_url_says_so(monkeypatch, capsys):
    for name in ("RECON_DATABASE_URL", "RECON_SUPABASE_URL", "RECON_SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert health_main([]) == 2
    assert "give --dsn, or set RECON_DATABASE_URL, or RECON_SUPABASE_URL and " \
           "RECON_SUPABASE_SERVICE_ROLE_KEY" in capsys.readouterr().err


def test_recon_health_refuses_half_or_both_database_configurations(monkeypatch, capsys):
    secret = "service-key-never-printed"
    monkeypatch.delenv("RECON_DATABASE_URL", raising=False)
    monkeypatch.delenv("RECON_SUPABASE_URL", raising=False)
    monkeypatch.setenv("RECON_SUPABASE_SERVICE_ROLE_KEY", secret)
    assert health_main([]) == 2
    assert "RECON_SUPABASE_URL is not set" in capsys.readouterr().err
    assert health_main(["--dsn", "postgresql://u:pw@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert "not both" in err and secret not in err and "pw@" not in err


def _reset_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def test_recon_health_command_serves_and_stops_on_sigterm(seeded_dsn):
    recon = Path(sys.executable).parent / "recon"
    env = {**os.environ, "RECON_DATABASE_URL": seeded_dsn}
    proc = subprocess.Popen([str(recon), "health", "--port", "0", "--stale-after-s", "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_reset_signals, start_new_session=True)
    try:
        banner = proc.stdout.readline()
        assert banner.startswith("recon health: serving http://127.0.0.1:"), (
            banner + proc.stderr.read() if proc.poll() is not None else banner)
        base = banner.split()[3].removesuffix("/internal/health")
        status, body = health(base)
        assert status == 200
        assert {k: body[k] for k in EXPECTED_HEALTH} == EXPECTED_HEALTH
        assert metrics(base)["reconciliation_mismatch_total"] == 14
        assert "postgres@" not in banner
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read().strip() == "recon health: stopped"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_metrics_speak_openmetrics_when_the_scraper_asks(seeded_dsn):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

    with serving(seeded_dsn) as base:
        request = urllib.request.Request(
            base + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(request, timeout=30) as response:
            content_type, text = response.headers["Content-Type"], response.read().decode()
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    samples = {s.name: s.value for f in parse_om(text) for s in f.samples if not s.labels}
    assert samples["reconciliation_mismatch_total"] == 14
    assert samples["reconciliation_parity_total_mismatch_notional_usd"] == 800.5


ALERTS_SEED = """
INSERT INTO recon.alerts (dedup_key, reason, exchange_account, profile_id, summary,
                          delivery_status) VALUES
  ('a1', 'unknown_fill', 'acct1', NULL, 's', 'delivered'),
  ('a2', 'watchdog_pause', 'acct1', 'beta', 's', 'pending'),
  ('a3', 'persistent_mismatch', 'acct2', NULL, 's', 'not_configured');
INSERT INTO recon.lock_contention (profile_id, cycle_id, waited_ms) VALUES ('alpha', 'c2', 3000);
"""


def test_per_account_and_per_profile_numbers_in_health_and_labelled_metrics(seeded_dsn):
    _execute(seeded_dsn, ALERTS_SEED)
    with serving(seeded_dsn) as base:
        _status, body = health(base)
        text = get(base + "/metrics")[2]
    accounts = {a["account"]: a for a in body["accounts"]}
    assert accounts["acct1"]["mismatchesByKind"] == {
        "ghost_slice": 3, "missing_from_exchange": 2, "missing_in_db": 1, "qty_drift": 1}
    assert accounts["acct1"]["notionalAtRiskUsd"] == 10 + 30 + 7 + 3 + 100 + 250.5 + 50
    assert (accounts["acct1"]["alertsLastDay"], accounts["acct1"]["alertsUndelivered"]) == (2, 1)
    profiles = {p["profileId"]: p for p in body["profiles"]}
    assert profiles["beta"]["mismatchesByKind"] == {
        "ghost_slice": 1, "missing_from_exchange": 1, "missing_in_db": 1}
    assert profiles["beta"]["notionalAtRiskUsd"] == 87.0
    assert (profiles["beta"]["alertsLastDay"], profiles["beta"]["alertsUndelivered"]) == (1, 1)
    assert profiles["gamma"]["mismatchesByKind"] == {"ghost_slice": 1}
    labelled = labelled_samples(text)

    def sample(name, **labels):
        return labelled[(name, tuple(sorted(labels.items())))]

    assert sample("reconciliation_mismatches", account="acct1", profile="alpha", kind="ghost_slice") == 2
    assert sample("reconciliation_mismatches", account="acct2", profile="", kind="missing_in_db") == 1
    assert sample("reconciliation_notional_at_risk_usd", account="acct1", profile="alpha",
                  kind="ghost_slice") == 350.5
    assert sample("reconciliation_alerts_total", account="acct1", profile="beta",
                  reason="watchdog_pause") == 1
    assert sample("reconciliation_alerts_undelivered", account="acct1", profile="beta",
                  reason="watchdog_pause") == 1
    assert metrics_of(text)["reconciliation_lock_contention_total"] == 1
    # The unlabelled totals stay.
    assert metrics_of(text)["reconciliation_mismatch_count"] == 9


def metrics_of(text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not s.labels}


def test_the_shipped_alert_rules_and_dashboard_name_only_metrics_that_exist(seeded_dsn):
    """deploy/prometheus/recon-alerts.yml encodes the runbook's "When to escalate";
    deploy/grafana/recon-dashboard.json plots the same series. Every metric either names is
    served (a counter as its _total sample)."""
    import pathlib
    import re

    import yaml

    deploy = pathlib.Path(__file__).resolve().parents[2] / "deploy"
    rules = yaml.safe_load((deploy / "prometheus" / "recon-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"ReconciliationMismatchPersists", "ReconciliationLockContention",
            "ReconciliationUnknownFills", "ReconciliationLoopUnhealthy",
            "ReconciliationWatchdogPaused"} <= names
    assert all(r.get("annotations", {}).get("summary") for g in rules["groups"] for r in g["rules"])
    dashboard = json.loads((deploy / "grafana" / "recon-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert dashboard["panels"] and all(p["targets"] for p in dashboard["panels"])
    _execute(seeded_dsn, ALERTS_SEED)
    with serving(seeded_dsn) as base:
        text = get(base + "/metrics")[2]
    served = set()
    for family in text_string_to_metric_families(text):
        served |= {family.name} | {s.name for s in family.samples}
    named = {m for e in exprs for m in re.findall(r"\breconciliation_[a-z_]+\b", e)}
    assert named and named <= served, sorted(named - served)


def test_the_server_binds_to_loopback_unless_told_otherwise(pg_dsn):
    from recon_assets.metrics.server import DEFAULT_HOST, build_parser

    assert DEFAULT_HOST == "127.0.0.1"
    assert build_parser().parse_args([]).host == "127.0.0.1"
    server = make_server(pg_dsn, port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_the_server_is_read_only_other_methods_get_405_and_change_nothing(seeded_dsn, method):
    import http.client
    from urllib.parse import urlsplit

    def table_rows(dsn):
        with psycopg.connect(dsn) as conn:
            names = [f"{s}.{t}" for s, t in conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE "
                "table_schema IN ('public', 'recon') AND table_type = 'BASE TABLE'").fetchall()]
            return {n: sorted(map(repr, conn.execute(f"SELECT * FROM {n}").fetchall()))
                    for n in names}

    before = table_rows(seeded_dsn)
    with serving(seeded_dsn) as url:
        for path in ("/internal/health", "/metrics", "/"):
            conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port,
                                              timeout=10)
            try:
                conn.request(method, path, body=b'{"trading_state": "active"}',
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                body = response.read()
            finally:
                conn.close()
            assert response.status == 405, (method, path)
            assert response.getheader("Allow") == "GET, HEAD"
            assert json.loads(body)["allow"] == ["GET", "HEAD"]
        # GET and HEAD are still answered.
        with urllib.request.urlopen(f"{url}/internal/health", timeout=10) as r:
            assert r.status == 200
        head = urllib.request.Request(f"{url}/metrics", method="HEAD")
        with urllib.request.urlopen(head, timeout=10) as r:
            assert r.status == 200 and r.read() == b""
    assert table_rows(seeded_dsn) == before


# A long history before the seed's cycles (all of it older than a day): 20,000 succeeded cycles
# of acct1 with three findings each, and 5,000 alerts, corrections and lock contention rows.
HISTORY = """
INSERT INTO recon.cycles (cycle_id, exchange_account, started_at, finished_at, status)
SELECT 'h' || g, 'acct1', now() - interval '3 days' - g * interval '1 s',
       now() - interval '3 days' - g * interval '1 s' + interval '500 ms', 'succeeded'
FROM generate_series(1, 20000) g;
INSERT INTO recon.mismatches (cycle_id, kind, profile_id, exchange_account, notional_usd)
SELECT 'h' || (g / 3 + 1), (ARRAY['missing_from_exchange', 'missing_in_db', 'qty_drift'])[g % 3 + 1],
       'alpha', 'acct1', 1
FROM generate_series(0, 59999) g;
INSERT INTO recon.alerts (dedup_key, reason, exchange_account, profile_id, summary, raised_at,
                          delivery_status)
SELECT 'old:' || g, (ARRAY['persistent_mismatch', 'unknown_fill'])[g % 2 + 1], 'acct1',
       CASE WHEN g % 2 = 0 THEN 'alpha' END, 'old', now() - interval '2 days',
       (ARRAY['delivered', 'given_up', 'pending', 'not_configured'])[g % 4 + 1]
FROM generate_series(0, 4999) g;
INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id, dry_run,
                               applied_at)
SELECT 'old:' || g, 'h' || g, 'alpha',
       (ARRAY['synthetic_exit', 'reconcile_cancel'])[g % 2 + 1], 't' || g, g % 3 = 0,
       now() - interval '3 days'
FROM generate_series(1, 5000) g;
INSERT INTO recon.lock_contention (profile_id, cycle_id, waited_ms, observed_at)
SELECT 'alpha', 'h' || g, 5, now() - interval '3 days' FROM generate_series(1, 5000) g;
ANALYZE;
"""

HISTORY_TABLES = ("cycles", "mismatches", "alerts", "corrections", "lock_contention")


def _rows_read(conn) -> dict[str, int]:
    """Rows each history table handed out so far, as the statistics collector counts them:
    read by sequential scans, and index entries read by index scans (index-only ones too)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return dict(conn.execute(
        "SELECT t.relname, COALESCE(t.seq_tup_read, 0) + COALESCE((SELECT sum(i.idx_tup_read) "
        "FROM pg_stat_user_indexes i WHERE i.relid = t.relid), 0) "
        "FROM pg_stat_user_tables t WHERE t.schemaname = 'recon' AND t.relname = ANY(%s)",
        (list(HISTORY_TABLES),)).fetchall())


def test_a_scrape_reads_a_bounded_number_of_rows_whatever_the_history(pg_dsn):
    """Issue 38: `/internal/health` counted every finding, correction, alert and lock
    contention row ever recorded on each scrape (and sorted every cycle of each account). With
    a long history the answer is the same as the seed's alone (the latest cycles, the totals
    including the history), and one read of the health state hands out a few rows of each
    history table: the latest cycles by index, the totals from the tables the history's
    triggers keep. Those totals equal a full count, also after delivery attempts moved
    alerts between statuses."""
    from recon_assets.metrics.health import read_state
    from recon_assets.resources.database import PostgresStore

    _execute(pg_dsn, HISTORY)
    _execute(pg_dsn, SEED)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        class OnThisConnection(PostgresStore):
            """The health read on the measuring connection, so its statistics are flushed
            before they are read (a pooled connection flushes them later)."""

            @contextlib.contextmanager
            def connect(self, autocommit: bool = False):
                conn.row_factory = psycopg.rows.dict_row
                try:
                    yield conn
                finally:
                    conn.row_factory = psycopg.rows.tuple_row

        before = _rows_read(conn)
        state = read_state(OnThisConnection(dsn=pg_dsn))
        conn.execute("SELECT pg_stat_force_next_flush()")
        after = _rows_read(conn)
        read = {t: after.get(t, 0) - before.get(t, 0) for t in HISTORY_TABLES}
        assert all(n <= 50 for n in read.values()), read
        assert read["cycles"] > 0 and read["mismatches"] > 0, read  # the counts are live

        assert {k: state.health[k] for k in EXPECTED_HEALTH} == {
            **EXPECTED_HEALTH, "reconciliationParityAutoClosedTrades": 1 + 2500 - 833}
        assert state.cumulative == {
            "mismatch": 60000 + 14, "missing_from_exchange": 20000 + 4,
            "missing_in_db": 20000 + 4, "lock_contention": 5000}

        def recount():
            return sorted(conn.execute(
                "SELECT exchange_account, profile_id, reason, delivery_status, count(*) "
                "FROM recon.alerts GROUP BY 1, 2, 3, 4").fetchall(), key=str)

        def totals():
            return sorted(conn.execute(
                "SELECT exchange_account, profile_id, reason, delivery_status, n "
                "FROM recon.alert_totals WHERE n > 0").fetchall(), key=str)

        assert totals() == recount()
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM recon.alerts WHERE delivery_status = 'pending' ORDER BY id LIMIT 3")]
        for alert_id, status in zip(ids, ("delivered", "given_up", "pending")):
            conn.execute("SELECT public.recon_record_delivery_attempt(%s, %s, NULL, NULL)",
                         (alert_id, status))
        assert totals() == recount()
        conn.execute("DELETE FROM recon.alerts WHERE id IN (SELECT id FROM recon.alerts "
                     "WHERE delivery_status = 'given_up' ORDER BY id LIMIT 7)")
        conn.execute("DELETE FROM recon.lock_contention WHERE id IN (SELECT id FROM "
                     "recon.lock_contention ORDER BY id LIMIT 5)")
        assert totals() == recount()  # alerts removed by hand leave the totals too
        for table, total in (("mismatch_totals", "mismatches"),
                             ("lock_contention_totals", "lock_contention")):
            kept = conn.execute(f"SELECT sum(n) FROM recon.{table}").fetchone()[0]
            assert kept == conn.execute(f"SELECT count(*) FROM recon.{total}").fetchone()[0]
