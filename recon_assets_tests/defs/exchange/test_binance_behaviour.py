"""Issue 15: the simulator behaves like Binance USD-M where a real account differs from a
friendly one (clock skew, conditional orders, query windows and retention, the per-IP weight
budget), and the exchange side copes with each. Real ccxt over HTTP, real Postgres."""

import json

import dagster as dg
import pytest

from recon_assets.defs.exchange.assets import exchange_snapshot
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources import exchange as exchange_module
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.exchange import ExchangeResource
from recon_assets.resources.io_manager import PostgresFrameIOManager
from recon_assets_tests.harness.exchange import running_simulator

pytestmark = pytest.mark.integration


@pytest.fixture
def sim():
    exchange_module.forget_process_state()  # each test is a fresh process for the exchange
    with running_simulator("demo") as server:
        yield server
    exchange_module.forget_process_state()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(exchange_account_partitions.name, ["acct1", "acct2"])
        yield inst


def _resources(sim, dsn, **settings):
    store = PostgresStore(dsn=dsn)
    exchange = ExchangeResource(credentials=json.dumps(sim.credentials()), api_base_url=sim.url,
                                enable_rate_limit=False, backoff_initial_s=0.02,
                                backoff_max_s=0.1, max_retry_after_s=5, **settings)
    return {"exchange": exchange, "database": store,
            "io_manager": PostgresFrameIOManager(database=store)}


def _run(instance, resources, account="acct1"):
    return dg.materialize([exchange_snapshot], partition_key=account, instance=instance,
                          resources=resources, raise_on_error=False)


def _error(result) -> str:
    return "\n".join(e.step_failure_data.error.to_string() for e in result.get_step_failure_events())


def _metadata(result, key):
    (event,) = [m for m in result.get_asset_materialization_events()
                if m.event_specific_data.materialization.asset_key.path[-1] == key]
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


# ---- clock skew ------------------------------------------------------------------------------
@pytest.mark.parametrize("offset_ms", [-90_000, 45_000])
def test_a_clock_off_by_more_than_recv_window_is_measured_once_and_the_cycle_succeeds(
        offset_ms, sim, pg_dsn, instance):
    """-1021 (timestamp outside recvWindow) without the fix; and with the exchange's clock 90 s
    behind ours, every response's Date looks 90 s old: stale, unless the measured offset is used."""
    sim.scenario.seed_database(pg_dsn)
    sim.exchange.set_clock_offset(offset_ms)
    result = _run(instance, _resources(sim, pg_dsn))
    assert result.success, _error(result)
    meta = _metadata(result, "exchange_positions")
    assert abs(meta["clock_offset_ms"] + offset_ms) < 2_000  # ours minus the exchange's
    assert meta["requests_by_endpoint"]["GET /fapi/v1/time"] == 1
    # The offset is shared: the next cycle (and the other account) does not measure it again.
    sim.exchange.reset_request_counts()
    assert _run(instance, _resources(sim, pg_dsn), "acct2").success
    assert "GET /fapi/v1/time" not in sim.exchange.request_counts


def test_a_clock_that_moves_mid_process_is_resynced_once_and_the_read_retried(
        sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    assert _run(instance, _resources(sim, pg_dsn)).success  # the offset is measured: about 0
    sim.exchange.set_clock_offset(-30_000)  # now ours is 30 s ahead: the next signed read -1021
    sim.exchange.reset_request_counts()
    result = _run(instance, _resources(sim, pg_dsn))
    assert result.success, _error(result)
    assert sim.exchange.request_counts.get("GET /fapi/v1/time") == 1  # one resync
    meta = _metadata(result, "exchange_positions")
    assert abs(meta["clock_offset_ms"] - 30_000) < 2_000
