-- The client_order_ids already resolved in earlier cycles for the exchange order ids p_order_ids
-- (a JSON array of text) of an account, one row per (exchange order id, client order id)
-- (FillStore.known_client_ids).
CREATE OR REPLACE FUNCTION public.recon_known_client_ids(p_account text, p_order_ids jsonb)
RETURNS TABLE (exchange_order_id text, client_order_id text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT DISTINCT f.exchange_order_id, f.client_order_id
    FROM recon.exchange_fills f
    WHERE f.exchange_account = p_account
      AND f.exchange_order_id = ANY (ARRAY(SELECT jsonb_array_elements_text(p_order_ids)))
      AND f.client_order_id IS NOT NULL;
$$;
