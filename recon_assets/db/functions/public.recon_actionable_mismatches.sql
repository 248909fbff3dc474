-- The cycle's mismatches of the kinds p_kinds (a JSON array of text) for one profile, joined
-- with the order as the database holds it now, numbers as exact text
-- (ReconStore.actionable_mismatches, for the lifecycle corrections).
CREATE OR REPLACE FUNCTION public.recon_actionable_mismatches(
    p_cycle_id text, p_profile_id text, p_kinds jsonb)
RETURNS TABLE (mismatch_id bigint, kind text, profile_id text, trade_id text, intent text,
               symbol text, side text, client_order_id text, exchange_order_id text,
               status text, qty text, filled_qty text, avg_fill_price text, price text,
               created_at_ms bigint)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT m.id, m.kind, o.profile_id, o.trade_id, o.intent::text, o.symbol, o.side::text,
           o.client_order_id, o.exchange_order_id, o.status::text,
           o.qty::text, o.filled_qty::text, o.avg_fill_price::text, o.price::text,
           (extract(epoch FROM o.created_at) * 1000)::bigint
    FROM recon.mismatches m
    JOIN public.orders o ON o.client_order_id = m.client_order_id AND o.profile_id = m.profile_id
    WHERE m.cycle_id = p_cycle_id AND m.profile_id = p_profile_id
      AND m.kind IN (SELECT jsonb_array_elements_text(p_kinds))
    ORDER BY m.client_order_id;
$$;
