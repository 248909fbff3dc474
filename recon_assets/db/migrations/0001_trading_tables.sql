-- Trading tables, owned by the trading app. recon-assets reads them and changes them only
-- through the lifecycle-safe handlers. The CHECK constraints are the ones that protect money:
-- a row that would make quantities negative or close more than was opened never lands.

CREATE TABLE IF NOT EXISTS profiles (
    id                     text PRIMARY KEY,
    exchange_account       text NOT NULL,
    -- Short tag embedded in every client_order_id this profile sends: it attributes exchange
    -- activity on a shared account to one profile.
    sub_tag                text NOT NULL UNIQUE CHECK (sub_tag ~ '^[A-Za-z0-9]{1,8}$'),
    allocated_capital_usd  numeric NOT NULL CHECK (allocated_capital_usd >= 0),
    trading_state          text NOT NULL DEFAULT 'active'
                           CHECK (trading_state IN ('active', 'paused', 'reconciling')),
    pause_source           text,
    paused_at              timestamptz,
    last_auto_resume_at    timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CHECK ((trading_state = 'paused') = (pause_source IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS profiles_exchange_account_idx ON profiles (exchange_account);

CREATE TABLE IF NOT EXISTS orders (
    id                 bigserial PRIMARY KEY,
    profile_id         text NOT NULL REFERENCES profiles (id),
    trade_id           text NOT NULL,
    intent             text NOT NULL CHECK (intent IN ('ENTRY', 'EXIT')),
    symbol             text NOT NULL,
    side               text NOT NULL CHECK (side IN ('buy', 'sell')),
    client_order_id    text NOT NULL UNIQUE,
    exchange_order_id  text,
    status             text NOT NULL
                       CHECK (status IN ('new', 'open', 'partially_filled', 'filled',
                                         'canceled', 'rejected', 'expired')),
    qty                numeric NOT NULL CHECK (qty > 0),
    filled_qty         numeric NOT NULL DEFAULT 0 CHECK (filled_qty >= 0),
    price              numeric CHECK (price >= 0),
    avg_fill_price     numeric CHECK (avg_fill_price >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (filled_qty <= qty)
);
CREATE INDEX IF NOT EXISTS orders_profile_status_idx ON orders (profile_id, status);
CREATE INDEX IF NOT EXISTS orders_trade_idx ON orders (trade_id);

-- One row per profile and symbol; qty is unsigned and side says the direction.
CREATE TABLE IF NOT EXISTS positions (
    profile_id  text NOT NULL REFERENCES profiles (id),
    symbol      text NOT NULL,
    side        text NOT NULL CHECK (side IN ('long', 'short')),
    qty         numeric NOT NULL CHECK (qty >= 0),
    avg_price   numeric NOT NULL DEFAULT 0 CHECK (avg_price >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, symbol)
);

-- One row per lifecycle slice of a trade. virtual_open_qty = entry_qty - exit_qty is what the
-- trading app believes is still open; the parity heartbeat compares it with the exchange.
CREATE TABLE IF NOT EXISTS trade_history (
    id                bigserial PRIMARY KEY,
    trade_id          text NOT NULL,
    slice_no          integer NOT NULL DEFAULT 1 CHECK (slice_no >= 1),
    profile_id        text NOT NULL REFERENCES profiles (id),
    symbol            text NOT NULL,
    side              text NOT NULL CHECK (side IN ('long', 'short')),
    entry_qty         numeric NOT NULL DEFAULT 0 CHECK (entry_qty >= 0),
    exit_qty          numeric NOT NULL DEFAULT 0 CHECK (exit_qty >= 0),
    virtual_open_qty  numeric GENERATED ALWAYS AS (entry_qty - exit_qty) STORED,
    entry_price       numeric CHECK (entry_price >= 0),
    exit_price        numeric CHECK (exit_price >= 0),
    realised_pnl_usd  numeric NOT NULL DEFAULT 0,
    status            text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    opened_at         timestamptz NOT NULL DEFAULT now(),
    closed_at         timestamptz,
    close_reason      text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (trade_id, slice_no),
    CHECK (exit_qty <= entry_qty),
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS trade_history_open_idx ON trade_history (profile_id, symbol)
    WHERE status = 'open';

-- Exchange fills already booked into orders/trade_history. The unique key makes booking a fill
-- twice impossible. Binance trade ids are unique per symbol, hence the symbol in the key.
CREATE TABLE IF NOT EXISTS applied_fills (
    id                bigserial PRIMARY KEY,
    exchange_account  text NOT NULL,
    symbol            text NOT NULL,
    exchange_fill_id  text NOT NULL,
    exchange_order_id text,
    client_order_id   text,
    profile_id        text NOT NULL REFERENCES profiles (id),
    trade_id          text,
    side              text NOT NULL CHECK (side IN ('buy', 'sell')),
    qty               numeric NOT NULL CHECK (qty > 0),
    price             numeric NOT NULL CHECK (price >= 0),
    fee_usd           numeric NOT NULL DEFAULT 0,
    filled_at         timestamptz NOT NULL,
    applied_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (exchange_account, symbol, exchange_fill_id)
);

-- Capital reserved by each open trade of a profile; recalculated after every correction.
CREATE TABLE IF NOT EXISTS capital_ledger (
    profile_id    text NOT NULL REFERENCES profiles (id),
    trade_id      text NOT NULL,
    reserved_usd  numeric NOT NULL CHECK (reserved_usd >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, trade_id)
);
