-- Exchange fills read so far, and where reading stopped per (account, symbol), so each cycle
-- asks the exchange only for what is new. Fills and cursors are written in one transaction after
-- a complete fetch, so a failed cycle changes neither. The exchange_fills snapshot asset is the
-- account's stored fills within a window, so evidence read in one cycle is still there when a
-- later cycle (after a recency hold, a lock contention or a dry run) acts on it.

CREATE TABLE IF NOT EXISTS recon.exchange_fills (
    exchange_account   text NOT NULL,
    symbol             text NOT NULL,             -- ccxt unified symbol, e.g. BTC/USDT:USDT
    exchange_fill_id   text NOT NULL,             -- Binance trade id (unique per symbol)
    exchange_order_id  text NOT NULL,
    client_order_id    text,                      -- from the order (userTrades does not carry it)
    side               text NOT NULL CHECK (side IN ('buy', 'sell')),
    qty                numeric NOT NULL CHECK (qty > 0),
    price              numeric NOT NULL CHECK (price >= 0),
    fee_usd            numeric NOT NULL DEFAULT 0,
    filled_at          timestamptz NOT NULL,
    first_seen_run_id  text,
    first_seen_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange_account, symbol, exchange_fill_id)
);
CREATE INDEX IF NOT EXISTS exchange_fills_account_time_idx
    ON recon.exchange_fills (exchange_account, filled_at);
CREATE INDEX IF NOT EXISTS exchange_fills_order_idx
    ON recon.exchange_fills (exchange_account, exchange_order_id);

CREATE TABLE IF NOT EXISTS recon.exchange_fill_cursors (
    exchange_account  text NOT NULL,
    symbol            text NOT NULL,
    -- Highest trade id read: the next read asks for fromId = last_fill_id + 1.
    last_fill_id      bigint CHECK (last_fill_id >= 0),
    last_fill_at      timestamptz,
    -- The exchange's view of the symbol (position amount and update time, open orders) when it
    -- was last read: while it is unchanged no new fill can exist, and the read is skipped.
    activity_key      text,
    read_at           timestamptz NOT NULL DEFAULT now(),
    run_id            text,
    PRIMARY KEY (exchange_account, symbol)
);
