"""The exchange snapshot assets: one pass over one exchange account yields all three frames, so
they describe the same moment, and a failed read writes none of them."""

import time

import dagster as dg
import pandas as pd

from recon_assets.core.exchange_snapshot import preview
from recon_assets.defs.partitions import exchange_account_partitions
from recon_assets.resources.database import TradingStore
from recon_assets.resources.exchange import ExchangeResource
from recon_assets.resources.exchange_snapshot import read_exchange_snapshot

SNAPSHOT_ASSETS = ("exchange_open_orders", "exchange_positions", "exchange_fills")
CHECK_NAME = "fresh_and_complete"

_DESCRIPTIONS = {
    "exchange_open_orders": "Every open order on the exchange account, all symbols, as the exchange reports it.",
    "exchange_positions": "The exchange position of each symbol that matters to the account (qty 0 when flat), with its quantity step.",
    "exchange_fills": "The account's exchange fills of the last hours, read incrementally per symbol, with client_order_id.",
}
_CHECK_DESCRIPTION = ("Blocks downstream use unless the snapshot is fresh (read in one short span, "
                      "not too old) and complete (a row for every symbol that matters, every fill "
                      "read to the end).")


@dg.multi_asset(
    name="exchange_snapshot",
    outs={key: dg.AssetOut(description=_DESCRIPTIONS[key], group_name="exchange",
                           kinds={"ccxt", "pandas"}) for key in SNAPSHOT_ASSETS},
    check_specs=[dg.AssetCheckSpec(CHECK_NAME, asset=key, blocking=True,
                                   description=_CHECK_DESCRIPTION) for key in SNAPSHOT_ASSETS],
    partitions_def=exchange_account_partitions,
    can_subset=False,
    deps=["cycle_start"],  # read after the cycle's start, like the database snapshot
)
def exchange_snapshot(context: dg.AssetExecutionContext, exchange: ExchangeResource,
                      database: TradingStore):
    """Reads one exchange account's open orders, positions and new fills in one pass."""
    snap = read_exchange_snapshot(exchange, database, context.partition_key, context.run.run_id)
    latency = snap.stats.as_metadata()
    common = {
        "requests": latency["requests"],
        "retries": latency["retries"],
        "request_seconds": latency["request_seconds"],
        "requests_by_endpoint": dg.MetadataValue.json(latency["requests_by_endpoint"]),
        "read_span_s": round(snap.read_finished - snap.read_started, 3),
        "symbols_that_matter": len(snap.symbols),
        # Charged to the account's egress budget (Binance's documented weights; 2400 per IP
        # and minute), and how often a read waited for the next minute's budget.
        "request_weight": latency["request_weight"],
        "budget_waits": latency["budget_waits"],
        # The schedule spreads the cycles of one egress over the minute by these.
        "egress": exchange.egress(context.partition_key),
        "egress_weight_limit": exchange.weight_limit_per_minute,
    }
    if latency["clock_offset_ms"] is not None:  # our clock minus the exchange's, as measured
        common["clock_offset_ms"] = latency["clock_offset_ms"]
    extra = {
        # Per symbol (weight 1 each) while cheaper than all at once (40).
        "exchange_open_orders": {"orders_read": "per symbol" if snap.orders_read_per_symbol
                                 else "all symbols at once"},
        "exchange_positions": {"flat_symbols": int((snap.positions["side"] == "flat").sum()),
                               "position_mode": "hedge" if snap.hedged else "one-way"},
        "exchange_fills": {"new_fills": snap.new_fills, "symbols_read": len(snap.fill_reads),
                           "order_lookups": snap.probes,
                           "unattributed_fills": int(snap.fills["client_order_id"].isna().sum()),
                           # The income history names symbols with trades nothing else points at.
                           "income_sweep": snap.income_sweep,
                           "income_symbols": ", ".join(snap.income_symbols) or "none",
                           **({"income_not_markets": ", ".join(snap.income_strangers)}
                              if snap.income_strangers else {})},
    }
    frames = {"exchange_open_orders": snap.open_orders, "exchange_positions": snap.positions,
              "exchange_fills": snap.fills}
    checked_at = time.time()
    outcomes = {key: snap.outcome(exchange, key, checked_at) for key in SNAPSHOT_ASSETS}
    checks = [dg.AssetCheckResult(
        asset_key=key, check_name=CHECK_NAME, passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"problems": "; ".join(outcome.problems) or "none",
                  "age_s": round(checked_at - snap.read_started, 3),
                  "read_span_s": common["read_span_s"]}) for key, outcome in outcomes.items()]
    failed = {key: o for key, o in outcomes.items() if not o.passed}
    if failed:
        # A stale or incomplete snapshot is never stored: the checks say why, the step fails,
        # and every reader keeps the previous good snapshot.
        yield from checks
        problems = "; ".join(f"{key}: {'; '.join(o.problems)}" for key, o in failed.items())
        context.log.warning(f"{context.partition_key}: {problems}")
        raise dg.Failure(f"exchange snapshot of {context.partition_key} is not fresh and complete "
                         f"({problems}); nothing was stored")
    read_at = pd.Timestamp(snap.read_started, unit="s", tz="UTC").floor("us").isoformat()
    for key in SNAPSHOT_ASSETS:
        frame = frames[key]
        # The stamp the diff checks its evidence by: when the picture was taken, by which run.
        frame.attrs["read_at"] = read_at
        frame.attrs["run_id"] = context.run.run_id
        yield dg.Output(frame, output_name=key, metadata={
            "rows": len(frame),
            "notional_usd": round(float(frame["notional_usd"].sum()), 2),
            "preview": dg.MetadataValue.md(preview(frame)),
            **common, **extra[key]})
    yield from checks
