-- The exchange's markets (ccxt's parsed list), loaded once and shared by every run while fresh
-- (recon.exchange_markets; resources/weight_budget.py):
--   public.recon_shared_markets(...)  the list loaded within p_max_age_s, or NULL
--   public.recon_share_markets(...)   records a newly loaded list
CREATE OR REPLACE FUNCTION public.recon_shared_markets(
    p_exchange text, p_max_age_s double precision)
RETURNS jsonb
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT m.markets FROM recon.exchange_markets m
    WHERE m.exchange = p_exchange AND m.loaded_at > now() - make_interval(secs => p_max_age_s);
$$;

CREATE OR REPLACE FUNCTION public.recon_share_markets(p_exchange text, p_markets jsonb)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    INSERT INTO recon.exchange_markets (exchange, markets, loaded_at)
    VALUES (p_exchange, p_markets, now())
    ON CONFLICT (exchange) DO UPDATE
        SET markets = EXCLUDED.markets, loaded_at = EXCLUDED.loaded_at;
$$;
