"""reconciliation_summary: after each new diff, one materialization with a series per account
(so the UI plots each account's own line) and the profiles' trading gates."""

import dagster as dg
import psycopg
import pytest

from recon_assets.defs.reconciliation.summary import reconciliation_summary_sensor
from recon_assets.resources.database import PostgresStore

pytestmark = pytest.mark.db

SEED = """
INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd, trading_state,
                      pause_source, paused_at) VALUES
  ('alpha', 'acct1', 'ALP', 20000, 'active', NULL, NULL),
  ('beta', 'acct1', 'BET', 10000, 'paused', 'parity_watchdog', now()),
  ('gamma', 'acct2', 'GAM', 5000, 'reconciling', NULL, NULL);
INSERT INTO recon.cycles (cycle_id, exchange_account, started_at, finished_at, status) VALUES
  ('c1', 'acct1', now() - interval '9 s', now() - interval '8 s', 'succeeded'),
  ('c2', 'acct2', now() - interval '7 s', now() - interval '6 s', 'succeeded');
INSERT INTO recon.mismatches (cycle_id, kind, profile_id, exchange_account, notional_usd) VALUES
  ('c1', 'ghost_slice', 'beta', 'acct1', 100.004),
  ('c1', 'missing_in_db', NULL, 'acct1', 5),
  ('c2', 'missing_from_exchange', 'gamma', 'acct2', 12.5);
"""


def test_each_new_diff_records_one_summary_with_a_series_per_account(pg_dsn):
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(SEED)
    store = PostgresStore(dsn=pg_dsn)
    with dg.instance_for_test() as instance:
        def tick(cursor=None):
            with dg.build_sensor_context(instance=instance, cursor=cursor,
                                         resources={"database": store}) as context:
                return reconciliation_summary_sensor(context)

        assert isinstance(tick(), dg.SkipReason)  # no diff yet
        for account in ("acct1", "acct2"):
            instance.report_runless_asset_event(
                dg.AssetMaterialization("reconciliation_diff", partition=account))
        result = tick()
        (event,) = result.asset_events
        meta = {k: getattr(v, "value", v) for k, v in event.metadata.items()}
        assert event.asset_key == dg.AssetKey("reconciliation_summary")
        assert (meta["acct1/mismatches"], meta["acct2/mismatches"]) == (2, 1)
        assert (meta["acct1/missing_in_db"], meta["acct2/missing_from_exchange"]) == (1, 1)
        assert meta["acct1/notional_at_risk_usd"] == 105.0  # cents
        assert meta["paused_profiles"] == 1
        assert "parity_watchdog" in meta["profiles"] and "reconciling" in meta["profiles"]
        assert isinstance(tick(result.cursor), dg.SkipReason)  # nothing new since
