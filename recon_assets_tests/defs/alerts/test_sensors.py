"""Escalation: the runbook's "When to escalate" raised once each and posted to a webhook."""

import dagster as dg
import pandas as pd
import psycopg
import pytest

from recon_assets.defs.alerts.sensors import escalation_sensor
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.alerts import AlertWebhook
from recon_assets.resources.database import PostgresStore
from recon_assets_tests.harness.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

GHOST = {"kind": "ghost_slice", "profile_id": "alpha", "exchange_account": "acct1",
         "symbol": "BTC/USDT:USDT", "client_order_id": None, "exchange_order_id": None,
         "trade_id": "t1", "notional_usd": 120.0}


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


def test_a_clean_account_next_to_a_drifting_one_does_not_stop_the_tick(pg_dsn):
    """Issue 10, sequence 8: acct1 drifts in both of its last cycles, acct2's are clean."""
    store = PostgresStore(dsn=pg_dsn)
    row = {k: v for k, v in GHOST.items() if k != "exchange_account"}
    for cycle_id, account, found in (("c1", "acct1", [row]), ("d1", "acct2", []),
                                     ("c2", "acct1", [row]), ("d2", "acct2", [])):
        store.call("recon_record_cycle", {"p_cycle_id": cycle_id, "p_account": account,
                                          "p_started_at": "2026-01-01T00:00:00+00:00",
                                          "p_mismatches": found})
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO recon.lock_contention (profile_id, cycle_id, waited_ms) "
                     "VALUES ('beta', 'd2', 3000)")
    with WebhookReceiver() as hook, dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1", "acct2"])
        _evaluate(instance, store, hook.url)
        reasons = sorted((p["recon_alert"]["reason"], p["recon_alert"]["exchange_account"])
                         for p in hook.posts)
    assert reasons == [("lock_contention", None), ("persistent_mismatch", "acct1")]


def test_one_accounts_broken_input_does_not_stop_the_others(pg_dsn):
    """A stored snapshot that cannot be read for one account: the other accounts still escalate."""
    store = PostgresStore(dsn=pg_dsn)
    row = {k: v for k, v in GHOST.items() if k != "exchange_account"}
    for cycle_id in ("c1", "c2"):
        store.call("recon_record_cycle", {"p_cycle_id": cycle_id, "p_account": "acct1",
                                          "p_started_at": "2026-01-01T00:00:00+00:00",
                                          "p_mismatches": [row]})
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO recon.asset_values (asset_key, partition_key, run_id, payload) "
                     "VALUES ('exchange_fills', 'acct2', 'r1', 'not parquet')")
    with WebhookReceiver() as hook, dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1", "acct2"])
        result = _evaluate(instance, store, hook.url)
        assert [p["recon_alert"]["reason"] for p in hook.posts] == ["persistent_mismatch"]
    assert result.asset_events  # the tick completed and reported acct1's alert


def _contention(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO recon.lock_contention (profile_id, cycle_id, waited_ms) "
                     "VALUES ('alpha', 'c1', 3000)")


def _deliveries(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute("SELECT delivery_status, attempts, delivered_at IS NOT NULL, "
                            "next_attempt_at IS NOT NULL, delivery_error FROM recon.alerts "
                            "ORDER BY id").fetchall()


def test_without_a_webhook_the_truth_is_not_configured(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    _contention(pg_dsn)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1"])
        _record_cycle(store, "c1", [{k: v for k, v in GHOST.items() if k != "exchange_account"}])
        _record_cycle(store, "c2", [{k: v for k, v in GHOST.items() if k != "exchange_account"}])
        (observation,) = _evaluate(instance, store, None).asset_events
    assert observation.metadata["delivery"].value == "not_configured"
    assert observation.metadata["delivered"].value is False
    assert _deliveries(pg_dsn) == [("not_configured", 0, False, False, None)] * 2


def test_a_503_then_200_is_delivered_once_later_with_backoff(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    _contention(pg_dsn)
    with WebhookReceiver(status=503) as hook, dg.instance_for_test() as instance:
        _evaluate(instance, store, hook.url)
        assert len(hook.posts) == 1
        assert _deliveries(pg_dsn) == [("pending", 1, False, True,
                                        "alert webhook answered HTTP 503")]
        hook.status = 200
        _evaluate(instance, store, hook.url)  # the retry is not due yet (30 s)
        assert len(hook.posts) == 1
        with psycopg.connect(pg_dsn) as conn:  # time passes (the database's clock decides)
            conn.execute("UPDATE recon.alerts SET next_attempt_at = now() - interval '1 s'")
        _evaluate(instance, store, hook.url)
        assert len(hook.posts) == 2
        assert _deliveries(pg_dsn) == [("delivered", 2, True, False, None)]
        _evaluate(instance, store, hook.url)
        assert len(hook.posts) == 2, "a delivered alert was sent again"


def test_an_alert_recorded_by_a_tick_that_crashed_before_posting_is_posted_next_tick(pg_dsn):
    from recon_assets.resources.recon_store import ReconStore

    store = PostgresStore(dsn=pg_dsn)
    # The crashed tick: the row is recorded (pending), the post never happened.
    ReconStore(store).record_alert("failed_cycle:acct1:c9", "failed_cycle", "acct1", None,
                                   "reconciliation cycle c9 on acct1 failed: boom", {}, "pending")
    with WebhookReceiver() as hook, dg.instance_for_test() as instance:
        _evaluate(instance, store, hook.url)
        assert [p["recon_alert"]["dedup_key"] for p in hook.posts] == ["failed_cycle:acct1:c9"]
    assert _deliveries(pg_dsn) == [("delivered", 1, True, False, None)]


def test_a_failed_post_is_given_up_after_the_last_attempt(pg_dsn):
    store = PostgresStore(dsn=pg_dsn)
    _contention(pg_dsn)
    with WebhookReceiver(status=500) as hook, dg.instance_for_test() as instance:
        for _ in range(12):
            _evaluate(instance, store, hook.url)
            with psycopg.connect(pg_dsn) as conn:
                conn.execute("UPDATE recon.alerts SET next_attempt_at = now() - interval '1 s' "
                             "WHERE delivery_status = 'pending'")
        assert len(hook.posts) == 10
    assert _deliveries(pg_dsn) == [("given_up", 10, False, False, "alert webhook answered HTTP 500")]
