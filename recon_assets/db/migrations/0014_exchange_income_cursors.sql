-- Where the income-history sweep of each exchange account stopped. The income history
-- (GET /fapi/v1/income, every symbol) names the symbols with trades since the cursor, so fills
-- on symbols the snapshot does not otherwise consider (a foreign round trip, an order the
-- database thinks cancelled that filled and closed within one cycle) are found and read.
-- Moved in the same transaction as the fills it led to.
CREATE TABLE IF NOT EXISTS recon.exchange_income_cursors (
    exchange_account text PRIMARY KEY,
    last_income_ms   bigint NOT NULL CHECK (last_income_ms >= 0),
    swept_at         timestamptz NOT NULL,
    run_id           text
);
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT, INSERT, UPDATE ON recon.exchange_income_cursors TO service_role;
    END IF;
END
$grants$;
