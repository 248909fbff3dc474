-- The client and exchange order ids of every order that carries one of p_ids (a JSON array of
-- text, client or exchange order ids), looked up by those ids only, not by reading the whole,
-- ever-growing orders table (TradingTables.known_order_ids, for the unknown-fill alert).
CREATE OR REPLACE FUNCTION public.recon_known_order_ids(p_ids jsonb)
RETURNS TABLE (client_order_id text, exchange_order_id text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT o.client_order_id, o.exchange_order_id FROM public.orders o
    WHERE o.client_order_id = ANY (ARRAY(SELECT jsonb_array_elements_text(p_ids)))
       OR o.exchange_order_id = ANY (ARRAY(SELECT jsonb_array_elements_text(p_ids)));
$$;
