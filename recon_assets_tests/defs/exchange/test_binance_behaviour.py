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


def _resources(sim, dsn, credentials=None, **settings):
    store = PostgresStore(dsn=dsn)
    exchange = ExchangeResource(credentials=json.dumps(credentials or sim.credentials()),
                                api_base_url=sim.url,
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


# ---- the per-IP request-weight budget --------------------------------------------------------
def _budget(dsn):
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT egress, used, blocked_until IS NOT NULL, "
                            "banned_until > now(), bans FROM recon.exchange_weight_budget "
                            "ORDER BY egress").fetchall()


def test_a_spent_weight_budget_is_one_429_for_every_run_then_silence_not_a_ban(
        sim, pg_dsn, instance):
    """The exchange's budget is spent (others on this IP, or a limit set too high here): one
    429, its Retry-After shared through Postgres, and no run sends before it ends. Without the
    shared budget, the next account's run sends at once and the IP is banned (418)."""
    sim.scenario.seed_database(pg_dsn)
    sim.exchange.set_rate_limits(weight_per_minute=60, window_s=600)
    first = _run(instance, _resources(sim, pg_dsn), "acct1")
    assert not first.success and "asked to wait" in _error(first)
    sim.exchange.reset_request_counts()
    second = _run(instance, _resources(sim, pg_dsn), "acct2")
    assert not second.success
    assert "back off (429 Retry-After)" in _error(second) and "acct2" in _error(second)
    assert sim.exchange.request_counts == {}  # not one request sent
    assert sim.exchange.limit_answers == {429: 1}  # and never banned
    assert _budget(pg_dsn)[0][2] is True


def test_a_418_ban_is_remembered_across_runs_until_it_ends(sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    sim.exchange.inject_fault("ban", path="/fapi/v1/openOrders", retry_after_s=600)
    first = _run(instance, _resources(sim, pg_dsn))
    assert not first.success and "asked to wait 600 s" in _error(first)
    assert _budget(pg_dsn) == [("default", _budget(pg_dsn)[0][1], False, True, 1)]
    sim.exchange.clear_faults()
    sim.exchange.reset_request_counts()
    exchange_module.forget_process_state()  # another run, another process
    again = _run(instance, _resources(sim, pg_dsn))
    assert not again.success and "banned this IP (418)" in _error(again)
    assert sim.exchange.request_counts == {}


def test_our_own_budget_stops_before_the_exchange_would_and_each_egress_has_its_own(
        sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    resources = _resources(sim, pg_dsn, weight_limit_per_minute=50, max_budget_wait_s=0)
    result = _run(instance, resources)
    assert not result.success and "budget of this minute is spent" in _error(result)
    assert sim.exchange.limit_answers == {}  # the exchange never had to say no
    # acct2 leaves through another IP: its own budget, untouched by acct1's.
    credentials = sim.credentials()
    credentials["acct2"]["egress"] = "ip-b"
    other = _run(instance, _resources(sim, pg_dsn, credentials, weight_limit_per_minute=200),
                 "acct2")
    assert other.success, _error(other)
    (default, ip_b) = _budget(pg_dsn)
    assert default[0] == "default" and default[1] <= 50
    assert ip_b[0] == "ip-b" and 0 < ip_b[1] <= 200


def test_every_request_is_charged_its_documented_weight(sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    result = _run(instance, _resources(sim, pg_dsn))
    assert result.success, _error(result)
    meta = _metadata(result, "exchange_positions")
    assert meta["request_weight"] == sim.exchange.used_weight  # what the exchange counted
    assert _budget(pg_dsn)[0][1] >= meta["request_weight"]
