-- The exchange's clock as measured from a host, shared by every run on it (recon.exchange_clock;
-- resources/weight_budget.py):
--   public.recon_shared_clock_offset(...)  the offset measured within p_max_age_s, or NULL
--   public.recon_share_clock_offset(...)   records a new measurement
CREATE OR REPLACE FUNCTION public.recon_shared_clock_offset(
    p_host text, p_exchange text, p_max_age_s double precision)
RETURNS integer
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT c.offset_ms FROM recon.exchange_clock c
    WHERE c.host = p_host AND c.exchange = p_exchange
      AND c.measured_at > now() - make_interval(secs => p_max_age_s);
$$;

CREATE OR REPLACE FUNCTION public.recon_share_clock_offset(
    p_host text, p_exchange text, p_offset_ms integer)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    INSERT INTO recon.exchange_clock (host, exchange, offset_ms, measured_at)
    VALUES (p_host, p_exchange, p_offset_ms, now())
    ON CONFLICT (host, exchange) DO UPDATE
        SET offset_ms = EXCLUDED.offset_ms, measured_at = EXCLUDED.measured_at;
$$;
