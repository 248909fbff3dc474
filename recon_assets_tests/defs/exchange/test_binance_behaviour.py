"""Issue 15: the simulator behaves like Binance USD-M where a real account differs from a
friendly one (clock skew, conditional orders, query windows and retention, the per-IP weight
budget), and the exchange side copes with each. Real ccxt over HTTP, real Postgres."""

import json
import time

import dagster as dg
import psycopg
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
    # The offset is shared: the next cycle (and the other account) does not measure it again,
    # nor does a run in another process on this host (through recon.exchange_clock).
    sim.exchange.reset_request_counts()
    assert _run(instance, _resources(sim, pg_dsn), "acct2").success
    exchange_module.forget_process_state()  # another run, another process
    assert _run(instance, _resources(sim, pg_dsn), "acct1").success
    assert "GET /fapi/v1/time" not in sim.exchange.request_counts
    # Past its TTL, it is measured again.
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE recon.exchange_clock SET measured_at = measured_at - interval '1 hour'")
    exchange_module.forget_process_state()
    assert _run(instance, _resources(sim, pg_dsn), "acct1").success
    assert sim.exchange.request_counts["GET /fapi/v1/time"] == 1


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


# ---- the cheapest read plan ----------------------------------------------------------------

def test_open_orders_are_read_per_symbol_until_all_at_once_is_cheaper(sim, pg_dsn, instance):
    """openOrders and openAlgoOrders weigh 1 per symbol and 40 without one: a few symbols are
    read one by one; with 40 or more that matter, one request each for all."""
    sim.scenario.seed_database(pg_dsn)
    few = _run(instance, _resources(sim, pg_dsn))
    assert few.success, _error(few)
    meta = _metadata(few, "exchange_open_orders")
    assert meta["orders_read"] == "per symbol"
    counts = sim.exchange.reset_request_counts()
    assert counts["GET /fapi/v1/openOrders"] == counts["GET /fapi/v1/openAlgoOrders"] \
        == meta["symbols_that_matter"] < 40

    for i in range(40):  # a market maker's account: resting orders on 40 more symbols
        symbol = f"T{i:02d}USDT"
        sim.exchange.add_market(symbol, f"T{i:02d}", "10.00", "0.1", "0.01")
        sim.exchange.place_order("acct1", symbol, "BUY", "LIMIT", "1", "5.00")
    exchange_module.forget_process_state()  # the next run's process loads the new markets
    many = _run(instance, _resources(sim, pg_dsn))
    assert many.success, _error(many)
    meta = _metadata(many, "exchange_open_orders")
    assert meta["orders_read"] == "all symbols at once" and meta["symbols_that_matter"] >= 40
    counts = sim.exchange.reset_request_counts()
    assert counts["GET /fapi/v1/openOrders"] == counts["GET /fapi/v1/openAlgoOrders"] == 1
    orders = many.output_for_node("exchange_snapshot", "exchange_open_orders")
    assert {f"T{i:02d}/USDT:USDT" for i in range(40)} <= set(orders["symbol"])


def test_a_symbol_listed_after_the_markets_were_loaded_reloads_them_once(sim, pg_dsn, instance):
    """The process loaded the markets; then the exchange lists a new symbol and the account
    trades it. Before, every cycle of that process failed ('not a market listed by
    exchangeInfo') until the markets' TTL ran out; now they are read again once."""
    sim.scenario.seed_database(pg_dsn)
    assert _run(instance, _resources(sim, pg_dsn)).success  # markets cached in this process
    sim.exchange.add_market("NEWUSDT", "NEW", "2.000", "1", "0.001")
    sim.exchange.place_order("acct1", "NEWUSDT", "BUY", "MARKET", "10", client_order_id="web_new")
    sim.exchange.reset_request_counts()
    result = _run(instance, _resources(sim, pg_dsn))
    assert result.success, _error(result)
    assert sim.exchange.reset_request_counts()["GET /fapi/v1/exchangeInfo"] == 1
    positions = result.output_for_node("exchange_snapshot", "exchange_positions")
    assert "NEW/USDT:USDT" in set(positions["symbol"])


def test_a_run_in_a_new_process_reuses_the_markets_and_clock_other_runs_read(
        sim, pg_dsn, instance):
    """exchangeInfo and time are the same for every account: one run reads them, the others
    (each Dagster run is its own process) take them from Postgres while they are fresh."""
    sim.scenario.seed_database(pg_dsn)
    assert _run(instance, _resources(sim, pg_dsn), "acct1").success
    exchange_module.forget_process_state()
    sim.exchange.reset_request_counts()
    result = _run(instance, _resources(sim, pg_dsn), "acct2")
    assert result.success, _error(result)
    counts = sim.exchange.reset_request_counts()
    assert "GET /fapi/v1/exchangeInfo" not in counts and "GET /fapi/v1/time" not in counts
    # Past the TTL, the next process reads them again.
    exchange_module.forget_process_state()
    assert _run(instance, _resources(sim, pg_dsn, markets_ttl_s=0), "acct2").success
    assert sim.exchange.reset_request_counts()["GET /fapi/v1/exchangeInfo"] == 1


# ---- every fill seen -----------------------------------------------------------------------

def _round_trip(sim, account, symbol, qty):
    sim.exchange.place_order(account, symbol, "BUY", "MARKET", qty, client_order_id="web_rt_open")
    sim.exchange.place_order(account, symbol, "SELL", "MARKET", qty, client_order_id="web_rt_close",
                             reduce_only=True)


def test_a_foreign_round_trip_on_an_untracked_symbol_is_found_through_the_income_history(
        sim, pg_dsn, instance):
    """Someone buys and sells XRP on the account by hand: no position is left and no order is
    open, and the database has nothing on XRP, so nothing points the snapshot at it. With the
    sweep off (as before), its fills are never read; the income history names it."""
    sim.scenario.seed_database(pg_dsn)
    _round_trip(sim, "acct2", "XRPUSDT", "20")
    xrp = "XRP/USDT:USDT"

    blind = _run(instance, _resources(sim, pg_dsn, income_sweep_interval_s=0), "acct2")
    assert blind.success, _error(blind)
    assert _metadata(blind, "exchange_fills")["income_sweep"] == "off"
    fills = blind.output_for_node("exchange_snapshot", "exchange_fills")
    assert xrp not in set(fills["symbol"])  # the failure: the round trip is invisible

    sim.exchange.reset_request_counts()
    seen = _run(instance, _resources(sim, pg_dsn), "acct2")
    assert seen.success, _error(seen)
    meta = _metadata(seen, "exchange_fills")
    # (and every other symbol of the account with fills in the window nothing pointed at)
    assert meta["income_sweep"] == "read" and xrp in meta["income_symbols"].split(", ")
    fills = seen.output_for_node("exchange_snapshot", "exchange_fills")
    round_trip = fills[fills["symbol"] == xrp]
    assert sorted(round_trip["client_order_id"]) == ["web_rt_close", "web_rt_open"]
    assert sim.exchange.reset_request_counts()["GET /fapi/v1/income"] == 1

    # Not due again within the interval: no income request, nothing re-read.
    again = _run(instance, _resources(sim, pg_dsn), "acct2")
    assert _metadata(again, "exchange_fills")["income_sweep"] == "not_due"
    assert "GET /fapi/v1/income" not in sim.exchange.reset_request_counts()

    # The next round trip, after the interval: found from the cursor, and only it is read.
    _round_trip(sim, "acct2", "ADAUSDT", "20")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE recon.exchange_income_cursors "
                     "SET swept_at = swept_at - interval '1 hour'")
    later = _run(instance, _resources(sim, pg_dsn), "acct2")
    meta = _metadata(later, "exchange_fills")
    named = meta["income_symbols"].split(", ")
    # From the cursor (less a minute's overlap, which XRP's fills fall in): the older history
    # is not named again.
    assert meta["income_sweep"] == "read" and "ADA/USDT:USDT" in named
    assert "BTC/USDT:USDT" not in named
    fills = later.output_for_node("exchange_snapshot", "exchange_fills")
    assert len(fills[fills["symbol"] == xrp]) == 2  # stored once, not read twice


def test_an_order_the_database_thinks_cancelled_that_filled_and_closed_is_found(
        sim, pg_dsn, instance):
    """The DB recorded gamma's DOGE ENTRY as cancelled, but it filled, and the position was
    closed again within the cycle: nothing is open on DOGE on either side, so only the income
    history points at its fills."""
    sim.scenario.seed_database(pg_dsn)
    assert _run(instance, _resources(sim, pg_dsn), "acct2").success  # first sweep done
    entry = sim.exchange.place_order("acct2", "DOGEUSDT", "BUY", "LIMIT", "1000", "0.100000",
                                     client_order_id="rc.GAM.t-g9.E1")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO orders (profile_id, trade_id, intent, symbol, side, "
                     "client_order_id, exchange_order_id, status, qty, filled_qty, price) VALUES "
                     "('gamma', 't-g9', 'ENTRY', 'DOGE/USDT:USDT', 'buy', 'rc.GAM.t-g9.E1', %s, "
                     "'canceled', 1000, 0, 0.10)", (str(entry.order_id),))
        conn.execute("UPDATE recon.exchange_income_cursors "
                     "SET swept_at = swept_at - interval '1 hour'")
    sim.exchange.fill_order("acct2", entry.order_id)
    sim.exchange.close_position("acct2", "DOGEUSDT", client_order_id="web_doge_close")
    result = _run(instance, _resources(sim, pg_dsn), "acct2")
    assert result.success, _error(result)
    meta = _metadata(result, "exchange_fills")
    assert "DOGE/USDT:USDT" in meta["income_symbols"].split(", ")
    fills = result.output_for_node("exchange_snapshot", "exchange_fills")
    doge = fills[fills["symbol"] == "DOGE/USDT:USDT"]
    assert sorted(doge["client_order_id"]) == ["rc.GAM.t-g9.E1", "web_doge_close"]


def test_an_income_sweep_that_does_not_fit_the_budget_waits_and_the_cycle_goes_on(
        sim, pg_dsn, instance):
    sim.scenario.seed_database(pg_dsn)
    # Room for the cycle's reads (a steady cycle's, measured), not for the 30 the income
    # history weighs on top.
    _run(instance, _resources(sim, pg_dsn, income_sweep_interval_s=0))
    steady = _run(instance, _resources(sim, pg_dsn, income_sweep_interval_s=0))
    needed = _metadata(steady, "exchange_positions")["request_weight"]
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM recon.exchange_weight_budget")
    sim.exchange.set_rate_limits()  # and the exchange forgets the probes' weight
    # The budget is per clock minute: a run that straddled two would find room again.
    second = time.time() % 60
    if second > 50:
        time.sleep(60.5 - second)
    result = _run(instance, _resources(sim, pg_dsn, weight_limit_per_minute=needed + 20,
                                       max_budget_wait_s=0))
    assert result.success, _error(result)
    assert _metadata(result, "exchange_fills")["income_sweep"] == "deferred"
    with psycopg.connect(pg_dsn) as conn:  # the cursor waits for the next sweep
        assert conn.execute("SELECT count(*) FROM recon.exchange_income_cursors").fetchone()[0] == 0
