-- What every run reads from the exchange alike, kept once for all of them (each request weighs
-- against the IP's budget):
-- * the exchange's clock as measured from one host (our clock minus the exchange's, ms): every
--   run and process on that host signs with it instead of measuring again. Keyed by host:
--   another machine's clock is its own;
-- * the markets (exchangeInfo, as ccxt parsed them): the same for every account.
CREATE TABLE IF NOT EXISTS recon.exchange_clock (
    host         text NOT NULL,
    exchange     text NOT NULL,
    offset_ms    integer NOT NULL,
    measured_at  timestamptz NOT NULL,
    PRIMARY KEY (host, exchange)
);
CREATE TABLE IF NOT EXISTS recon.exchange_markets (
    exchange   text PRIMARY KEY,
    markets    jsonb NOT NULL CHECK (jsonb_typeof(markets) = 'array'),
    loaded_at  timestamptz NOT NULL
);
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT, INSERT, UPDATE ON recon.exchange_clock, recon.exchange_markets TO service_role;
    END IF;
END
$grants$;
