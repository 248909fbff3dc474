-- Where an exchange account's income-history sweep stopped: the last income time read and when
-- the sweep ran, both ms since the epoch; no row before the first sweep (FillStore.income_cursor).
CREATE OR REPLACE FUNCTION public.recon_income_cursor(p_account text)
RETURNS TABLE (last_income_ms bigint, swept_ms bigint)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT c.last_income_ms, (extract(epoch FROM c.swept_at) * 1000)::bigint
    FROM recon.exchange_income_cursors c
    WHERE c.exchange_account = p_account;
$$;
