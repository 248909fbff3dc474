-- The order a handler corrects, locked FOR UPDATE, or a clear exception.
CREATE OR REPLACE FUNCTION recon._lock_order(
    p_handler text, p_profile_id text, p_client_order_id text, p_intent text,
    p_exchange_order_id text)
RETURNS public.orders
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    o public.orders%ROWTYPE;
BEGIN
    IF p_client_order_id IS NULL OR p_client_order_id = '' THEN
        RAISE EXCEPTION '%: a client_order_id is required', p_handler;
    END IF;
    SELECT * INTO o FROM public.orders WHERE client_order_id = p_client_order_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: unknown order %: no order with this client_order_id in the database (profile %)',
            p_handler, p_client_order_id, p_profile_id
            USING HINT = 'an exchange order missing in the database is flagged for the operator, '
                         'never adopted by a lifecycle handler';
    END IF;
    IF o.profile_id <> p_profile_id THEN
        RAISE EXCEPTION '%: order % belongs to profile %, not to profile %',
            p_handler, p_client_order_id, o.profile_id, p_profile_id;
    END IF;
    IF p_intent IS NOT NULL AND o.intent <> p_intent THEN
        RAISE EXCEPTION '%: order % (trade %) is an % order; this handler corrects % orders',
            p_handler, p_client_order_id, o.trade_id, o.intent, p_intent;
    END IF;
    IF p_exchange_order_id IS NOT NULL AND o.exchange_order_id IS NOT NULL
       AND o.exchange_order_id <> p_exchange_order_id THEN
        RAISE EXCEPTION '%: order % has exchange order id % in the database, the evidence says %',
            p_handler, p_client_order_id, o.exchange_order_id, p_exchange_order_id;
    END IF;
    RETURN o;
END;
$$;
