"""Database snapshot assets, materialized by real Dagster against the real PostgreSQL."""

import dagster as dg
import psycopg
import pytest

from recon_assets.defs.database.assets import db_snapshot, partitions_sensor
from recon_assets.defs.partitions import exchange_account_partitions, profile_partitions
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets.settings import ReconSettings

pytestmark = pytest.mark.integration


def _seed(dsn):
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) VALUES "
            "('alpha', 'acct1', 'ALP', 10000), ('beta', 'acct1', 'BET', 5000), "
            "('gamma', 'acct2', 'GAM', 2000)")
        conn.execute(
            "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, status,"
            " qty, filled_qty, price) VALUES "
            "('alpha', 't1', 'ENTRY', 'BTC/USDT:USDT', 'buy', 'rc.ALP.t1.E1', 'open', 2, 0.5, 100),"
            "('alpha', 't0', 'ENTRY', 'BTC/USDT:USDT', 'buy', 'rc.ALP.t0.E1', 'filled', 1, 1, 90),"
            "('gamma', 't9', 'ENTRY', 'ETH/USDT:USDT', 'buy', 'rc.GAM.t9.E1', 'open', 1, 0, 10)")
        conn.execute(
            "INSERT INTO trade_history (trade_id, profile_id, symbol, side, entry_qty, exit_qty,"
            " entry_price) VALUES ('t0', 'alpha', 'BTC/USDT:USDT', 'long', 1, 0.25, 90)")
        conn.execute("INSERT INTO positions (profile_id, symbol, side, qty, avg_price) "
                     "VALUES ('alpha', 'BTC/USDT:USDT', 'long', 0.75, 90)")


def _materialize(dsn, instance, account="acct1"):
    store = PostgresStore(dsn=dsn)
    instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1", "acct2"])
    return dg.materialize(
        [db_snapshot], partition_key=account, instance=instance,
        resources={"database": store, "settings": ReconSettings(),
                   "io_manager": PostgresFrameIOManager(database=store)})


def test_db_snapshot_reads_one_account_consistently_and_persists_it(pg_dsn):
    _seed(pg_dsn)
    with dg.instance_for_test() as instance:
        result = _materialize(pg_dsn, instance)
        assert result.success
        profiles = result.output_for_node("db_snapshot", "db_profiles")
        orders = result.output_for_node("db_snapshot", "db_orders")
        slices = result.output_for_node("db_snapshot", "db_trade_slices")
        positions = result.output_for_node("db_snapshot", "db_positions")
        assert sorted(profiles["profile_id"]) == ["alpha", "beta"]
        assert sorted(orders["client_order_id"]) == ["rc.ALP.t0.E1", "rc.ALP.t1.E1"]
        assert slices["virtual_open_qty"].tolist() == [0.75]
        assert positions["qty"].tolist() == [0.75]
        # One statement means one read time shared by all four snapshots.
        assert len({f.attrs["read_at"] for f in (profiles, orders, slices, positions)}) == 1
        by_key = {e.asset_key.to_user_string(): e.materialization
                  for e in result.get_asset_materialization_events()}
        assert by_key["db_profiles"].metadata["allocated_capital_usd"].value == 15000.0
        assert by_key["db_orders"].metadata["open_orders"].value == 1
        assert by_key["db_orders"].metadata["open_notional_usd"].value == 150.0
    # The IO manager stored them in Postgres, where another machine's run would read them.
    with psycopg.connect(pg_dsn) as conn:
        stored = {r[0] for r in conn.execute(
            "SELECT asset_key FROM recon.asset_values WHERE partition_key = 'acct1'")}
    assert stored == {"db_profiles", "db_orders", "db_positions", "db_trade_slices"}


def test_db_snapshot_fails_when_the_database_is_unreachable(pg_dsn):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1"])
        store = PostgresStore(dsn="postgresql://u:hunter2@127.0.0.1:1/none", connect_timeout_s=1)
        result = dg.materialize(
            [db_snapshot], partition_key="acct1", instance=instance, raise_on_error=False,
            resources={"database": store, "settings": ReconSettings(),
                       "io_manager": PostgresFrameIOManager(database=PostgresStore(dsn=pg_dsn))})
        assert not result.success
        failure = result.get_step_failure_events()[0].event_specific_data.error
        assert "cannot connect to the database at 127.0.0.1:1/none" in failure.to_string()
        assert "hunter2" not in failure.to_string()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM recon.asset_values").fetchone()[0] == 0


def test_partitions_sensor_follows_the_profiles_table(pg_dsn):
    _seed(pg_dsn)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["gone"])
        context = dg.build_sensor_context(instance=instance,
                                          resources={"database": PostgresStore(dsn=pg_dsn)})
        result = partitions_sensor(context)
        adds = {r.partitions_def_name: r.partition_keys for r in result.dynamic_partitions_requests
                if isinstance(r, dg.AddDynamicPartitionsRequest)}
        deletes = [r for r in result.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
        assert adds[exchange_account_partitions.name] == ["acct1", "acct2"]
        assert deletes[0].partition_keys == ["gone"]
        # The correction job's partitions: one per profile.
        assert adds[profile_partitions.name] == ["alpha", "beta", "gamma"]
