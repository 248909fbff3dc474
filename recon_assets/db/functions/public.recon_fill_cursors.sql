-- Where the last fill read of each symbol of an exchange account stopped: the highest trade id
-- read, the exchange's activity fingerprint then, and when (ms since the epoch)
-- (FillStore.cursors).
CREATE OR REPLACE FUNCTION public.recon_fill_cursors(p_account text)
RETURNS TABLE (symbol text, last_fill_id bigint, activity_key text, read_at_ms bigint)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT c.symbol, c.last_fill_id, c.activity_key,
           (extract(epoch FROM c.read_at) * 1000)::bigint
    FROM recon.exchange_fill_cursors c
    WHERE c.exchange_account = p_account;
$$;
