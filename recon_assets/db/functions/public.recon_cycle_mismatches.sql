-- The findings the diff recorded for one cycle of an account, in the order they were recorded:
-- the kinds, profiles, notionals and details the integrity watchdog charges
-- (WatchdogStore.cycle_mismatches).
CREATE OR REPLACE FUNCTION public.recon_cycle_mismatches(p_cycle_id text, p_account text)
RETURNS TABLE (kind text, profile_id text, exchange_account text, symbol text, trade_id text,
               notional_usd double precision, details jsonb)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT m.kind, m.profile_id, m.exchange_account, m.symbol, m.trade_id,
           m.notional_usd::float8, m.details
    FROM recon.mismatches m
    WHERE m.cycle_id = p_cycle_id AND m.exchange_account = p_account
    ORDER BY m.id;
$$;
