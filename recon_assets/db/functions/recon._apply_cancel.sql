-- reconcileCancel: the order's status only (canceled, or expired/rejected as the exchange says);
-- never from filled. An order the exchange filled more of than the database booked needs a fill
-- handler first (p_filled_qty, when given, is checked).
CREATE OR REPLACE FUNCTION recon._apply_cancel(p_profile_id text, p_client_order_id text, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    h constant text := 'recon_reconcile_cancel';
    o public.orders%ROWTYPE;
    a public.orders%ROWTYPE;
    v_final text := COALESCE(r->>'final_status', 'canceled');
    v_filled numeric := (r->>'filled_qty')::numeric;
BEGIN
    IF v_final NOT IN ('canceled', 'expired', 'rejected') THEN
        RAISE EXCEPTION '%: order %: final status must be canceled, expired or rejected, not %',
            h, p_client_order_id, v_final;
    END IF;
    o := recon._lock_order(h, p_profile_id, p_client_order_id, NULL, r->>'exchange_order_id');
    IF o.status = v_final THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'unchanged', 'trade_id', o.trade_id,
            'reason', 'the order is already ' || v_final || ' in the database',
            'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o)));
    END IF;
    IF NOT (o.status = ANY (recon.open_order_statuses())) THEN
        RAISE EXCEPTION '%: illegal transition: cannot mark order % (trade %) % because it is % in the database',
            h, o.client_order_id, o.trade_id, v_final, o.status;
    END IF;
    IF v_filled IS NOT NULL AND v_filled <> o.filled_qty THEN
        RAISE EXCEPTION '%: order %: the exchange reports % filled but the database booked %; book the fill (recon_reconcile_%_fill) before cancelling',
            h, o.client_order_id, v_filled, o.filled_qty, pg_catalog.lower(o.intent);
    END IF;
    IF v_final = 'rejected' AND o.filled_qty > 0 THEN
        RAISE EXCEPTION '%: order % has % filled, so it cannot be rejected', h, o.client_order_id, o.filled_qty;
    END IF;
    UPDATE public.orders
       SET status = v_final,
           exchange_order_id = COALESCE(exchange_order_id, r->>'exchange_order_id'),
           updated_at = pg_catalog.now()
     WHERE id = o.id
    RETURNING * INTO a;
    RETURN pg_catalog.jsonb_build_object(
        'status', 'changed', 'trade_id', o.trade_id,
        'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o),
                                               'after', pg_catalog.to_jsonb(a)));
END;
$$;
