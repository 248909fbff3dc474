-- The exchange's request-weight budget, shared by every run and process that reads through one
-- egress (one IP): Binance counts weight per IP and clock minute, not per key or client. One row
-- per egress: the weight used in the current minute (what we charged, raised to what the
-- exchange reports in X-MBX-USED-WEIGHT-1M), a Retry-After the exchange asked for, and an IP ban
-- (418) with how many bans came before, remembered across runs until it ends.
CREATE TABLE IF NOT EXISTS recon.exchange_weight_budget (
    egress         text PRIMARY KEY,
    window_start   timestamptz NOT NULL,
    used           integer NOT NULL DEFAULT 0 CHECK (used >= 0),
    blocked_until  timestamptz,
    banned_until   timestamptz,
    bans           integer NOT NULL DEFAULT 0 CHECK (bans >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- Supabase's service_role (rpc() with the service key) charges and notes the budget.
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT, INSERT, UPDATE ON recon.exchange_weight_budget TO service_role;
    END IF;
END
$grants$;
