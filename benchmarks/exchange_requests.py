"""Benchmark of the exchange snapshot (issue 3): requests per cycle per account, against the
minimum the Binance USD-M endpoints allow, for 1, 10 and 100 accounts with 50 symbols each.

Each account holds an open position on each of its 50 symbols (one filled ENTRY per symbol,
recorded in the database as an open trade slice) and a resting EXIT order on 10 of them. For
each account count, three cycles run against the loopback simulator through the real ccxt and
the real Postgres (`read_exchange_snapshot`, the function the Dagster assets call):

  cold    first cycle of a fresh process: no fill cursor, markets not loaded yet
  steady  nothing happened on the exchange since
  active  5 of the 50 symbols got a fill behind the database's back

Minimum the endpoints allow, per account and cycle: `openOrders` without a symbol (1 request
for all symbols), `positionRisk` (1 request for all symbols), `userTrades` (requires a symbol:
1 request per symbol that may have new fills, and at least one per symbol ever, to establish
where reading starts), one `order` lookup per fill whose order is neither open nor in the
database (userTrades carries no clientOrderId), and `exchangeInfo` once per process (shared by
every account).
"Per-symbol" is what a loop over the symbols would cost: openOrders and userTrades per symbol,
plus exchangeInfo and leverageBracket per account.

The weight column uses Binance's documented request weights (openOrders without a symbol 40,
positionRisk 5, userTrades 5, exchangeInfo 1, order 1); an IP may spend 2400 per minute.
Request counting is exact; times are wall clock on this machine and only indicative.
ccxt's client-side throttle is off here: it paces requests, it does not change their number.

    .venv/bin/python benchmarks/exchange_requests.py [--accounts 1,10,100] [--symbols 50]

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
from recon_assets.db.migrate import migrate  # noqa: E402
from recon_assets.resources.exchange_snapshot import read_exchange_snapshot  # noqa: E402
from recon_assets.local_postgres import LocalPostgres  # noqa: E402
from recon_assets.resources import exchange as exchange_module  # noqa: E402
from recon_assets.resources.database import PostgresStore  # noqa: E402
from recon_assets.resources.exchange import ExchangeResource  # noqa: E402
from recon_assets.simulator import SimulatorServer  # noqa: E402
from recon_assets.simulator.server import credentials  # noqa: E402

WEIGHTS = {"GET /fapi/v1/openOrders": 40, "GET /fapi/v3/positionRisk": 5, "GET /fapi/v1/userTrades": 5,
           "GET /fapi/v1/exchangeInfo": 1, "GET /fapi/v1/order": 1, "GET /fapi/v1/leverageBracket": 1}
SHORT = {"GET /fapi/v1/openOrders": "openOrders", "GET /fapi/v3/positionRisk": "positionRisk",
         "GET /fapi/v1/userTrades": "userTrades", "GET /fapi/v1/exchangeInfo": "exchangeInfo",
         "GET /fapi/v1/order": "order"}
ACTIVE_SYMBOLS = 5


def _populate(sim: SimulatorServer, dsn: str, accounts: int, symbols: int) -> list[str]:
    ex = sim.exchange
    ex.reset()
    markets = [f"S{i:03d}USDT" for i in range(symbols)]
    for m in markets:
        ex.add_market(m, f"S{int(m[1:4]):03d}", "100.00", "0.001", "0.01")
    names = [f"bench{a:03d}" for a in range(accounts)]
    profiles, slices, orders = [], [], []
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
            if i < 10:
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


def _cycle(resource, store, names, label):
    totals: Counter = Counter()
    started = time.perf_counter()
    for name in names:
        snap = read_exchange_snapshot(resource, store, name, run_id=f"bench-{label}")
        totals.update(snap.stats.by_endpoint)
        assert len(snap.positions) >= 50 and not snap.incomplete
    return totals, time.perf_counter() - started


def _minimum(cycle: str, accounts: int, symbols: int) -> float:
    trades = {"cold": symbols, "steady": 0, "active": ACTIVE_SYMBOLS}[cycle]
    # userTrades carries no clientOrderId: attributing a fill of an order that is neither open
    # nor in the database takes one order lookup (here: each active fill is a foreign order).
    lookups = ACTIVE_SYMBOLS if cycle == "active" else 0
    exchange_info = (1 / accounts) if cycle == "cold" else 0.0
    return 2 + trades + lookups + exchange_info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", default="1,10,100")
    parser.add_argument("--symbols", type=int, default=50)
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.accounts.split(",")]

    base = tempfile.mkdtemp(prefix="recon-bench-pg-")
    os.chmod(base, 0o755)
    pg = LocalPostgres(os.path.join(base, "data"))
    sim = SimulatorServer(port=0)
    rows = []
    try:
        pg.start()
        sim.start()
        for n in counts:
            dsn = pg.create_database(f"bench{n}")
            migrate(dsn)
            names = _populate(sim, dsn, n, args.symbols)
            store = PostgresStore(dsn=dsn)
            resource = ExchangeResource(credentials=json.dumps(credentials(sim.exchange)),
                                        api_base_url=sim.url, enable_rate_limit=False)
            exchange_module._MARKETS_CACHE.clear()  # a fresh process
            for label in ("cold", "steady", "active"):
                if label == "active":
                    _activity(sim, names)
                totals, seconds = _cycle(resource, store, names, label)
                total = sum(totals.values())
                weight = sum(WEIGHTS.get(k, 1) * v for k, v in totals.items())
                per_symbol = 1 + args.symbols * 2 + 2  # openOrders+userTrades per symbol, positionRisk, exchangeInfo, leverageBracket
                rows.append({
                    "accounts": n, "cycle": label, "requests": total,
                    "per_account": total / n, "minimum": _minimum(label, n, args.symbols),
                    "per_symbol_loop": per_symbol, "weight_per_account": weight / n,
                    "endpoints": ", ".join(f"{SHORT.get(k, k)} {v / n:g}" for k, v in sorted(totals.items())),
                    "seconds": seconds})
            pg.drop_database(f"bench{n}")
    finally:
        sim.stop()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)

    header = (f"{'accounts':>8} {'cycle':>6} {'requests':>8} {'per acct':>8} {'minimum':>8} "
              f"{'per-symbol loop':>15} {'weight/acct':>11} {'wall s':>7}  requests per account by endpoint")
    print(f"exchange snapshot requests per cycle ({args.symbols} symbols per account, all with a position)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['accounts']:>8} {r['cycle']:>6} {r['requests']:>8} {r['per_account']:>8.2f} "
              f"{r['minimum']:>8.2f} {r['per_symbol_loop']:>15} {r['weight_per_account']:>11.2f} "
              f"{r['seconds']:>7.2f}  {r['endpoints']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
