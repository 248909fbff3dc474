"""Issue item 11, "Hedge fills know their leg": the payload check of Binance's userTrades
answer and a fill's positionSide (BOTH in one-way mode, LONG/SHORT per leg in hedge mode; a
fill without one is one-way; any other value is a malformed row), and the leg through
recon.exchange_fills (FillStore.save_and_read_window): stored, read back, unknown for a fill
stored before migration 0020 and filled in when that fill is read again."""

from datetime import datetime, timedelta, timezone

import pandas as pd
import psycopg
import pytest

from recon_assets.core.exchange_snapshot import fill_rows, fills_frame
from recon_assets.resources.binance_usdm import check_payload
from recon_assets.resources.database import PostgresStore
from recon_assets.resources.exchange_errors import ExchangePayloadError
from recon_assets.resources.fill_store import FillStore

TRADES = "/fapi/v1/userTrades"
_DROP = object()


def _trade(**changes):
    row = {"buyer": False, "commission": "0.001", "commissionAsset": "USDT", "id": 7,
           "maker": False, "orderId": 9, "price": "100.0", "qty": "0.010", "quoteQty": "1.0",
           "realizedPnl": "0", "side": "SELL", "positionSide": "SHORT", "symbol": "BTCUSDT",
           "time": 1_767_225_600_000}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not _DROP}


@pytest.mark.unit
@pytest.mark.parametrize("leg", ["BOTH", "LONG", "SHORT", _DROP])
def test_a_fill_on_a_known_leg_or_without_one_is_accepted(leg):
    check_payload("GET", TRADES, [_trade(positionSide=leg)], {"BTCUSDT"})


@pytest.mark.unit
@pytest.mark.parametrize("leg", ["SIDEWAYS", "short", "", None, 1, ["SHORT"], {"leg": "SHORT"}])
def test_a_fill_naming_no_known_leg_is_a_malformed_row(leg):
    with pytest.raises(ExchangePayloadError, match="'positionSide'"):
        check_payload("GET", TRADES, [_trade(positionSide=leg)], {"BTCUSDT"})


SYMBOL = "BTC/USDT:USDT"
FILLED_AT = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)


def _ccxt_trade(fill_id: int, side: str, leg: str | None) -> dict:
    return {"id": str(fill_id), "order": "900", "symbol": SYMBOL, "side": side, "amount": 0.01,
            "price": 60000.0, "timestamp": int(FILLED_AT.timestamp() * 1000) + fill_id,
            "fee": {"cost": 0.24, "currency": "USDT"},
            "info": {} if leg is None else {"positionSide": leg}}


@pytest.mark.db
def test_the_leg_is_stored_read_back_and_filled_in_for_a_fill_stored_without_one(pg_dsn):
    store = FillStore(PostgresStore(dsn=pg_dsn))
    since = FILLED_AT - timedelta(hours=1)
    rows = fill_rows("acct3", [_ccxt_trade(1, "sell", "SHORT"), _ccxt_trade(2, "sell", "LONG")], {})
    old = {**fill_rows("acct3", [_ccxt_trade(3, "buy", "SHORT")], {})[0], "position_side": None}
    inserted, window = store.save_and_read_window("acct3", "run-1", rows + [old], {}, {}, since)
    assert inserted == 3
    assert [w.get("position_side", "?") for w in window] == ["short", "long", "?"]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT exchange_fill_id, position_side FROM recon.exchange_fills "
                            "ORDER BY 1").fetchall() == [("1", "short"), ("2", "long"), ("3", None)]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE recon.exchange_fills SET position_side = 'sideways'")
    # The leg of fill 3 is unknown: one-way on a one-way account, no guess on a hedged one.
    now = pd.Timestamp.now(tz="UTC")
    assert fills_frame("acct3", window, now)["position_side"].tolist() == ["short", "long", "both"]
    assert fills_frame("acct3", window, now, hedged=True)["position_side"].tolist() == [
        "short", "long", None]
    # Read again from the exchange: the leg is filled in once, a known leg never overwritten.
    again = fill_rows("acct3", [_ccxt_trade(3, "buy", "SHORT"), _ccxt_trade(1, "sell", "LONG")], {})
    inserted, window = store.save_and_read_window("acct3", "run-2", again, {}, {}, since)
    assert inserted == 0
    assert [w["position_side"] for w in window] == ["short", "long", "short"]
