"""Database snapshot assets, materialized by real Dagster against the real PostgreSQL."""

import dagster as dg
import psycopg

from recon_assets.defs.database.assets import db_profiles, exchange_account_partitions_sensor
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets.settings import ReconSettings


def _seed(dsn):
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) VALUES "
            "('alpha', 'acct1', 'ALP', 10000), ('beta', 'acct1', 'BET', 5000), "
            "('gamma', 'acct2', 'GAM', 2000)")


def test_db_profiles_materializes_one_account_and_persists_it(pg_dsn):
    _seed(pg_dsn)
    store = PostgresStore(dsn=pg_dsn)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["acct1", "acct2"])
        result = dg.materialize(
            [db_profiles], partition_key="acct1", instance=instance,
            resources={"database": store, "settings": ReconSettings(),
                       "io_manager": PostgresFrameIOManager(database=store)})
        assert result.success
        frame = result.output_for_node("db_profiles")
        assert sorted(frame["profile_id"]) == ["alpha", "beta"]
        mat = result.asset_materializations_for_node("db_profiles")[0]
        assert mat.metadata["profiles"].value == 2
        assert mat.metadata["allocated_capital_usd"].value == 15000.0
    # The IO manager stored it in Postgres, where another machine's run would read it.
    with psycopg.connect(pg_dsn) as conn:
        (count,) = conn.execute("SELECT count(*) FROM recon.asset_values "
                                "WHERE asset_key = 'db_profiles' AND partition_key = 'acct1'").fetchone()
    assert count == 1


def test_partitions_sensor_follows_the_profiles_table(pg_dsn):
    _seed(pg_dsn)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, ["gone"])
        context = dg.build_sensor_context(instance=instance,
                                          resources={"database": PostgresStore(dsn=pg_dsn)})
        result = exchange_account_partitions_sensor(context)
        adds = [r for r in result.dynamic_partitions_requests if isinstance(r, dg.AddDynamicPartitionsRequest)]
        deletes = [r for r in result.dynamic_partitions_requests if isinstance(r, dg.DeleteDynamicPartitionsRequest)]
        assert adds[0].partition_keys == ["acct1", "acct2"]
        assert deletes[0].partition_keys == ["gone"]
