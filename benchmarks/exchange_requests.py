"""Benchmark of the exchange snapshot's request plan (issues 3 and 15): requests and request
weight per account and cycle, next to Binance USD-M's per-IP budget (2,400 weight a minute),
for 1, 10 and 100 accounts with 5 and 50 symbols that matter each.

Each account holds an open position on each of its symbols (one filled ENTRY per symbol,
recorded in the database as an open trade slice), a resting EXIT order on half of them (at
most 10) and a stop-loss (a conditional order, held by Binance's Algo Service) on each. For each
size, three cycles run against the loopback simulator through the real ccxt and the real
Postgres (`read_exchange_snapshot`, the function the Dagster assets call):

  cold    first cycle of a fresh process: no fill cursor, markets and clock not known yet,
          the first income sweep
  steady  nothing happened on the exchange since (the income sweep is not due), all
          accounts read by one process
  per-run the same, each account's read in a fresh process, as each Dagster run is today
          (markets and clock from Postgres, where the first run left them)
  active  5 of the symbols got a fill behind the database's back

The weight is what the exchange client charged to the egress budget (the documented weights
of `core.request_weights`), equal to what the simulator counts. The budget columns take the
steady and per-run cycles at a one-minute schedule, plus the income sweep (weight 30) spread
over its interval (`income_sweep_interval_s`), per account and minute, and how many accounts one IP carries at that rate with 30 % of its budget left as headroom.
The baseline is the plan before issue 15 (open orders and conditional orders read for all
symbols at once, weight 40 each, in every cycle), computed from the same run's request counts:
the steady cycle's weight with its per-symbol order reads replaced by those two requests.
The simulator's and the project's weight limits are lifted for the run: this measures weight,
not pacing. Times are wall clock on this machine and only indicative.

    .venv/bin/python benchmarks/exchange_requests.py [--accounts 1,10,100] [--symbols 5,50]

Starts its own Postgres and simulator, stops both, writes nothing into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from recon_assets.core.attribution import make_client_order_id  # noqa: E402
from recon_assets.core.request_weights import (NO_SYMBOL_WEIGHTS, REQUEST_WEIGHTS,  # noqa: E402
                                               WEIGHT_LIMIT_PER_MINUTE)
from recon_assets.db.migrate import migrate  # noqa: E402
from recon_assets.local_postgres import LocalPostgres  # noqa: E402
from recon_assets.resources import exchange as exchange_module  # noqa: E402
from recon_assets.resources.database import PostgresStore  # noqa: E402
from recon_assets.resources.exchange import ExchangeResource  # noqa: E402
from recon_assets.resources.exchange_snapshot import read_exchange_snapshot  # noqa: E402
from recon_assets.simulator import SimulatorServer  # noqa: E402
from recon_assets.simulator.server import credentials  # noqa: E402

ACTIVE_SYMBOLS = 5
HEADROOM = 0.30
INCOME_WEIGHT = REQUEST_WEIGHTS[("GET", "/fapi/v1/income")]
NO_SYMBOL_ORDERS = NO_SYMBOL_WEIGHTS[("GET", "/fapi/v1/openOrders")]


def _short(endpoint: str) -> str:
    return endpoint.rsplit("/", 1)[-1]


def _populate(sim: SimulatorServer, dsn: str, accounts: int, symbols: int) -> list[str]:
    ex = sim.exchange
    ex.reset()
    ex.set_rate_limits(weight_per_minute=10**9)
    markets = [f"S{i:03d}USDT" for i in range(symbols)]
    for m in markets:
        ex.add_market(m, f"S{int(m[1:4]):03d}", "100.00", "0.001", "0.01")
    names = [f"bench{a:03d}" for a in range(accounts)]
    profiles, slices, orders = [], [], []
    resting_exits = min(10, max(1, symbols // 2))
    for a, name in enumerate(names):
        ex.add_account(name)
        sub_tag = f"B{a:03d}"
        profiles.append((name, name, sub_tag))
        for i, m in enumerate(markets):
            trade = f"t{a:03d}x{i:03d}"
            entry = ex.place_order(name, m, "BUY", "LIMIT", "1.000", "99.00",
                                   client_order_id=make_client_order_id(sub_tag, trade, "ENTRY"))
            ex.fill_order(name, entry.order_id)
            unified = ex.markets[m].unified
            slices.append((trade, name, unified, "long", 1, 99))
            orders.append((name, trade, "ENTRY", unified, "buy", entry.client_order_id,
                           str(entry.order_id), "filled", 1, 1, 99))
            # The stop-loss: recorded with its trigger price and the algo id, as the app does.
            stop = ex.place_algo_order(name, m, "SELL", "STOP_MARKET", "1.000", "80.00", None,
                                       make_client_order_id(sub_tag, trade, "EXIT", 2), True)
            orders.append((name, trade, "EXIT", unified, "sell", stop.client_algo_id,
                           str(stop.algo_id), "open", 1, 0, 80))
            if i < resting_exits:
                exit_ = ex.place_order(name, m, "SELL", "LIMIT", "1.000", "110.00",
                                       client_order_id=make_client_order_id(sub_tag, trade, "EXIT"))
                orders.append((name, trade, "EXIT", unified, "sell", exit_.client_order_id,
                               str(exit_.order_id), "open", 1, 0, 110))
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO profiles (id, exchange_account, sub_tag, allocated_capital_usd) "
                            "VALUES (%s, %s, %s, 100000)", profiles)
            cur.executemany("INSERT INTO trade_history (trade_id, profile_id, symbol, side, entry_qty, "
                            "entry_price) VALUES (%s, %s, %s, %s, %s, %s)", slices)
            cur.executemany("INSERT INTO orders (profile_id, trade_id, intent, symbol, side, "
                            "client_order_id, exchange_order_id, status, qty, filled_qty, price) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", orders)
    return names


def _activity(sim: SimulatorServer, names: list[str]) -> None:
    for name in names:
        for i in range(ACTIVE_SYMBOLS):
            sim.exchange.place_order(name, f"S{i:03d}USDT", "BUY", "MARKET", "0.100",
                                     client_order_id="web_bench" + f"{i:03d}")


def _cycle(resource, store, names, label, symbols):
    totals: Counter = Counter()
    weight = 0
    started = time.perf_counter()
    for name in names:
        if label == "per-run":
            exchange_module.forget_process_state()  # this account's run is a new process
        snap = read_exchange_snapshot(resource, store, name, run_id=f"bench-{label}")
        totals.update(snap.stats.by_endpoint)
        weight += snap.stats.weight
        assert len(snap.positions) >= symbols and not snap.incomplete
    return totals, weight, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", default="1,10,100")
    parser.add_argument("--symbols", default="5,50")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.accounts.split(",")]
    sizes = [int(x) for x in args.symbols.split(",")]

    base = tempfile.mkdtemp(prefix="recon-bench-pg-")
    os.chmod(base, 0o755)
    pg = LocalPostgres(os.path.join(base, "data"))
    sim = SimulatorServer(port=0)
    rows = []
    interval_s = ExchangeResource(credentials="{}").income_sweep_interval_s
    try:
        pg.start()
        sim.start()
        for symbols in sizes:
            for n in counts:
                db = f"bench{n}s{symbols}"
                dsn = pg.create_database(db)
                migrate(dsn)
                names = _populate(sim, dsn, n, symbols)
                store = PostgresStore(dsn=dsn)
                resource = ExchangeResource(credentials=json.dumps(credentials(sim.exchange)),
                                            api_base_url=sim.url, enable_rate_limit=False,
                                            weight_limit_per_minute=10**9)
                exchange_module.forget_process_state()  # a fresh process
                for label in ("cold", "steady", "per-run", "active"):
                    if label == "active":
                        _activity(sim, names)
                    totals, weight, seconds = _cycle(resource, store, names, label, symbols)
                    per_symbol = sum(v for k, v in totals.items()
                                     if k.endswith(("/openOrders", "/openAlgoOrders"))) \
                        if symbols < NO_SYMBOL_ORDERS else 0
                    rows.append({
                        "order_reads": per_symbol,
                        "symbols": symbols, "accounts": n, "cycle": label,
                        "requests_per_account": sum(totals.values()) / n,
                        "weight_per_account": weight / n,
                        "endpoints": ", ".join(f"{_short(k)} {v / n:g}" for k, v in sorted(totals.items())),
                        "seconds": seconds})
                pg.drop_database(db)
    finally:
        sim.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)

    usable = WEIGHT_LIMIT_PER_MINUTE * (1 - HEADROOM)
    print(f"exchange snapshot: requests and weight per account and cycle (per-IP budget "
          f"{WEIGHT_LIMIT_PER_MINUTE} a minute; income sweep every {interval_s} s)")
    header = (f"{'symbols':>7} {'accounts':>8} {'cycle':>7} {'requests':>8} {'weight':>7} "
              f"{'wall s':>7}  per account by endpoint")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['symbols']:>7} {r['accounts']:>8} {r['cycle']:>7} {r['requests_per_account']:>8.2f} "
              f"{r['weight_per_account']:>7.2f} {r['seconds']:>7.2f}  {r['endpoints']}")
    print()
    print(f"one IP at a one-minute cycle (steady cycle + income sweep spread over its interval; "
          f"{HEADROOM:.0%} headroom leaves {usable:.0f} a minute)")
    header = (f"{'symbols':>7} {'accounts':>8} {'cycle':>7} {'weight/acct/min':>15} "
              f"{'all accts/min':>13} {'headroom':>8} {'accts per IP':>12} {'baseline':>8} "
              f"{'ratio':>6}")
    print(header)
    print("-" * len(header))
    sweep = INCOME_WEIGHT * 60 / interval_s if interval_s else 0.0
    for r in rows:
        if r["cycle"] not in ("steady", "per-run"):
            continue
        reads = r["order_reads"] / r["accounts"]  # per-symbol open-order reads, weight 1 each
        base = r["weight_per_account"] - reads + (2 * NO_SYMBOL_ORDERS if reads else 0)
        per_min = r["weight_per_account"] + sweep
        total = per_min * r["accounts"]
        print(f"{r['symbols']:>7} {r['accounts']:>8} {r['cycle']:>7} {per_min:>15.2f} {total:>13.0f} "
              f"{1 - total / WEIGHT_LIMIT_PER_MINUTE:>8.1%} {int(usable // per_min):>12} "
              f"{base:>8.2f} {per_min / base:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
