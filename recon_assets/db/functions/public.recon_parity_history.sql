-- The last p_limit parity checks of each slice of p_slices (a JSON array of
-- [profile_id, trade_id, slice_no]), newest first, quantities as float8 for display
-- (ReconStore.parity_history, the heartbeat's metadata).
CREATE OR REPLACE FUNCTION public.recon_parity_history(p_slices jsonb, p_limit integer DEFAULT 5)
RETURNS TABLE (profile_id text, trade_id text, slice_no integer, cycle_id text,
               checked_at timestamptz, db_qty double precision, exchange_qty double precision,
               mark_price double precision, streak integer, decision text, n bigint)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT * FROM (
        SELECT c.profile_id, c.trade_id, c.slice_no, c.cycle_id, c.checked_at,
               c.virtual_open_qty::float8, c.exchange_qty::float8, c.mark_price::float8,
               c.streak, c.decision,
               row_number() OVER (PARTITION BY c.profile_id, c.trade_id, c.slice_no
                                  ORDER BY c.checked_at DESC)
        FROM recon.parity_checks c
        WHERE (c.profile_id, c.trade_id, c.slice_no) IN (
            SELECT k->>0, k->>1, (k->>2)::integer FROM jsonb_array_elements(p_slices) k)) x
    WHERE x.row_number <= p_limit
    ORDER BY x.profile_id, x.trade_id, x.slice_no, x.checked_at DESC;
$$;
