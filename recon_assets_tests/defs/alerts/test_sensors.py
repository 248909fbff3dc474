"""Escalation: the runbook's "When to escalate" raised once each and posted to a webhook."""

import dagster as dg
import pandas as pd
import psycopg
import pytest

from recon_assets.core.escalation import (lock_contention, persistent_mismatches, slack_payload,
                                          unknown_fills)
from recon_assets.defs.alerts.sensors import escalation_sensor
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.alerts import AlertWebhook
from recon_assets.resources.database import PostgresStore
from recon_assets_tests.harness.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

GHOST = {"kind": "ghost_slice", "profile_id": "alpha", "exchange_account": "acct1",
         "symbol": "BTC/USDT:USDT", "client_order_id": None, "exchange_order_id": None,
         "trade_id": "t1", "notional_usd": 120.0}


def _cycles(*ids):
    return pd.DataFrame({"cycle_id": list(ids), "exchange_account": "acct1",
                         "finished_at": pd.date_range("2026-01-01", periods=len(ids), freq="min", tz="UTC")})


def test_mismatch_in_both_of_the_last_two_runs_escalates():
    mismatches = pd.DataFrame([{**GHOST, "cycle_id": "c1"}, {**GHOST, "cycle_id": "c2"}])
    (alert,) = persistent_mismatches(mismatches, _cycles("c1", "c2"))
    assert alert.reason == "persistent_mismatch" and alert.exchange_account == "acct1"
    assert alert.dedup_key.startswith("persistent_mismatch:acct1:")
    # The same persisting set in a later cycle is the same episode: no second alert.
    later = pd.DataFrame([{**GHOST, "cycle_id": "c2"}, {**GHOST, "cycle_id": "c3"}])
    assert persistent_mismatches(later, _cycles("c2", "c3"))[0].dedup_key == alert.dedup_key
    # A different set (new drift joined) is a new escalation.
    grown = pd.concat([later, pd.DataFrame([{**GHOST, "trade_id": "t9", "cycle_id": c} for c in ("c2", "c3")])])
    assert persistent_mismatches(grown, _cycles("c2", "c3"))[0].dedup_key != alert.dedup_key
    assert alert.details["by_kind"] == {"ghost_slice": 1} and alert.details["profiles"] == ["alpha"]


def test_mismatch_resolved_by_the_second_run_does_not_escalate():
    mismatches = pd.DataFrame([{**GHOST, "cycle_id": "c1"}, {**GHOST, "trade_id": "t2", "cycle_id": "c2"}])
    assert persistent_mismatches(mismatches, _cycles("c1", "c2")) == []


def test_a_single_run_is_not_enough_to_escalate():
    assert persistent_mismatches(pd.DataFrame([{**GHOST, "cycle_id": "c1"}]), _cycles("c1")) == []


def test_unknown_fills_are_those_no_order_explains():
    fills = pd.DataFrame({"exchange_fill_id": ["1", "2", "3"], "exchange_order_id": ["o1", "o2", "o3"],
                          "client_order_id": ["rc.ALP.t1.E1", None, None], "symbol": "BTC/USDT:USDT",
                          "notional_usd": [10.0, 20.0, 30.0]})
    (alert,) = unknown_fills(fills, {"rc.ALP.t1.E1", "o2"}, "acct1")
    assert alert.details["exchange_fill_ids"] == ["3"] and alert.details["notional_usd"] == 30.0
    assert unknown_fills(fills, {"o1", "o2", "o3"}, "acct1") == []


def test_lock_contention_alert_names_the_profile():
    events = pd.DataFrame({"id": [7], "profile_id": ["alpha"], "cycle_id": ["c9"], "waited_ms": [5000]})
    (alert,) = lock_contention(events)
    assert alert.profile_id == "alpha" and "5000 ms" in alert.summary


def test_slack_payload_has_text_and_blocks():
    (alert,) = lock_contention(pd.DataFrame({"id": [1], "profile_id": ["a"], "cycle_id": ["c"], "waited_ms": [1]}))
    payload = slack_payload(alert)
    assert payload["text"].startswith(":rotating_light: Reconciliation lock contention")
    assert payload["blocks"][0]["type"] == "header"
    assert payload["recon_alert"]["dedup_key"] == "lock_contention:1"


def _record_cycle(store, cycle_id, mismatches):
    store.call("recon_record_cycle", {"p_cycle_id": cycle_id, "p_account": "acct1",
                                      "p_started_at": "2026-01-01T00:00:00+00:00",
                                      "p_mismatches": mismatches})


def _evaluate(instance, store, url):
    context = dg.build_sensor_context(
        instance=instance, resources={"database": store, "alert_webhook": AlertWebhook(url=url)})
    return escalation_sensor(context)


def test_sensor_posts_each_escalation_once(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    row = {k: v for k, v in GHOST.items() if k != "exchange_account"}
    _record_cycle(store, "c1", [row])
    _record_cycle(store, "c2", [row])
    with WebhookReceiver() as hook, dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1"])
        result = _evaluate(instance, store, hook.url)
        assert len(hook.posts) == 1
        assert "still present after 2 reconciliation runs" in hook.posts[0]["text"]
        (observation,) = result.asset_events
        assert observation.asset_key == dg.AssetKey("reconciliation_diff")
        assert observation.metadata["alert"].value == "persistent_mismatch"
        _evaluate(instance, store, hook.url)
        assert len(hook.posts) == 1, "the same escalation was sent twice"
        _record_cycle(store, "c3", [])  # resolved: nothing new to escalate
        _evaluate(instance, store, hook.url)
        assert len(hook.posts) == 1
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT reason, delivered_at IS NOT NULL, delivery_error FROM recon.alerts").fetchall()
    assert rows == [("persistent_mismatch", True, None)]


def test_failed_delivery_is_recorded_without_the_secret_url(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO recon.lock_contention (profile_id, cycle_id, waited_ms) VALUES ('alpha', 'c1', 3000)")
    with WebhookReceiver(status=500) as hook, dg.instance_for_test() as instance:
        _evaluate(instance, store, hook.url)
        assert len(hook.posts) == 1
    with psycopg.connect(pg_dsn) as conn:
        (error,) = conn.execute("SELECT delivery_error FROM recon.alerts").fetchone()
    assert error == "alert webhook answered HTTP 500"
    assert "secret-token" not in error


def test_without_a_webhook_alerts_are_still_recorded_but_not_delivered(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO recon.lock_contention (profile_id, cycle_id, waited_ms) VALUES ('alpha', 'c1', 3000)")
    with dg.instance_for_test() as instance:
        _evaluate(instance, store, None)
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT reason, delivered_at FROM recon.alerts").fetchall() == [
            ("lock_contention", None)]


def test_a_failed_cycle_is_escalated_once(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    store.call("recon_record_failed_cycle", {"p_cycle_id": "c7", "p_account": "acct1",
                                             "p_error": "ExchangeFetchError: acct1: 5 attempts\ntrace"})
    with WebhookReceiver() as hook, dg.instance_for_test() as instance:
        _evaluate(instance, store, hook.url)
        _evaluate(instance, store, hook.url)
        assert len(hook.posts) == 1
        assert hook.posts[0]["recon_alert"]["reason"] == "failed_cycle"
        assert "c7 on acct1 failed: ExchangeFetchError: acct1: 5 attempts" in hook.posts[0]["text"]


def test_sensor_escalates_fills_no_order_explains(pg_dsn):
    import io

    store = PostgresStore(dsn=pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) "
                     "VALUES ('alpha', 'acct1', 'ALP', 1000)")
        conn.execute("INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, "
                     "exchange_order_id, status, qty) VALUES ('alpha', 't1', 'ENTRY', 'BTC/USDT:USDT', "
                     "'buy', 'rc.ALP.t1.E1', '111', 'filled', 1)")
        fills = pd.DataFrame({"exchange_fill_id": ["1", "2", "3"], "exchange_order_id": ["110", "111", "999"],
                              "client_order_id": ["rc.ALP.t1.E1", None, None], "symbol": "BTC/USDT:USDT",
                              "notional_usd": [10.0, 20.0, 30.0]})
        payload = io.BytesIO()
        fills.to_parquet(payload, index=False)
        conn.execute("INSERT INTO recon.asset_values (asset_key, partition_key, run_id, payload) "
                     "VALUES ('exchange_fills', 'acct1', 'r1', %s)", (payload.getvalue(),))
    with WebhookReceiver() as hook, dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1"])
        _evaluate(instance, store, hook.url)
        (post,) = hook.posts
    assert post["recon_alert"]["reason"] == "unknown_fill"
    assert post["recon_alert"]["details"]["exchange_fill_ids"] == ["3"]
