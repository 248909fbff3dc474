-- The order statuses that count as open (the order can still fill), the SQL side's one home for
-- the list. Python's is recon_assets.core.rules.OPEN_ORDER_STATUSES; a test checks they agree.
-- IMMUTABLE, so a call inside a query is folded to a constant when the query is planned.
CREATE OR REPLACE FUNCTION recon.open_order_statuses()
RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT ARRAY['new', 'open', 'partially_filled']::text[]
$$;
