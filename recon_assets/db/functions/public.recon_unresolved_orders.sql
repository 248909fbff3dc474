-- The exchange orders (id and symbol, by order id) of an account's stored fills since p_since
-- whose client_order_id is still unknown (FillStore.unresolved_orders).
CREATE OR REPLACE FUNCTION public.recon_unresolved_orders(p_account text, p_since timestamptz)
RETURNS TABLE (exchange_order_id text, symbol text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT f.exchange_order_id, min(f.symbol)
    FROM recon.exchange_fills f
    WHERE f.exchange_account = p_account AND f.filled_at >= p_since
      AND f.client_order_id IS NULL
    GROUP BY f.exchange_order_id
    ORDER BY f.exchange_order_id;
$$;
