-- Fill arguments of the fill handlers (recon_reconcile_entry_fill / recon_reconcile_exit_fill):
--
-- Fill arguments carry the exchange's cumulative view of the order (what ccxt's fetch_order
-- gives): p_filled_qty = total filled, p_avg_fill_price = average price of that total, p_fills =
-- ALL fills of the order as a JSON array [{"id", "qty", "price", "fee_usd"?, "filled_at"?}].
-- The handler books delta = p_filled_qty - orders.filled_qty (at the price that makes the
-- order's average come out right), so the same evidence under another key books nothing twice
-- ("unchanged"), and applied_fills (UNIQUE per account, symbol, fill id) books every fill once.
-- Fills, when given, must add up to p_filled_qty.

-- Book the exchange's cumulative fill state on an order. Returns {"status": "unchanged"} when
-- the database already agrees, else {"status": "changed", "delta", "delta_price",
-- "order": {"before", "after"}}.
CREATE OR REPLACE FUNCTION recon._book_order_fill(p_handler text, o public.orders, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_filled numeric := (r->>'filled_qty')::numeric;
    v_avg numeric := (r->>'avg_fill_price')::numeric;
    v_final text := r->>'final_status';
    v_delta numeric;
    v_price numeric;
    v_status text;
    a public.orders%ROWTYPE;
BEGIN
    IF v_filled IS NULL OR v_filled <= 0 THEN
        RAISE EXCEPTION '%: order % needs a filled qty > 0 (got %); an order that filled nothing is corrected by recon_reconcile_cancel',
            p_handler, o.client_order_id, COALESCE(v_filled::text, 'none');
    END IF;
    IF v_avg IS NULL OR v_avg <= 0 THEN
        RAISE EXCEPTION '%: order % needs an average fill price > 0 (got %)',
            p_handler, o.client_order_id, COALESCE(v_avg::text, 'none');
    END IF;
    IF v_final IS NOT NULL AND v_final NOT IN ('canceled', 'expired') THEN
        RAISE EXCEPTION '%: order %: final status must be canceled or expired (or none), not %',
            p_handler, o.client_order_id, v_final;
    END IF;
    IF v_filled > o.qty THEN
        RAISE EXCEPTION '%: the exchange reports % filled for order %, more than its qty %',
            p_handler, v_filled, o.client_order_id, o.qty;
    END IF;
    IF v_filled < o.filled_qty THEN
        RAISE EXCEPTION '%: the exchange reports % filled for order %, less than the % the database booked; an operator must look at it',
            p_handler, v_filled, o.client_order_id, o.filled_qty;
    END IF;
    v_status := CASE WHEN v_filled = o.qty THEN 'filled'
                     WHEN v_final IS NOT NULL THEN v_final
                     ELSE 'partially_filled' END;
    v_delta := v_filled - o.filled_qty;
    IF v_delta = 0 AND v_status = o.status THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'unchanged',
            'reason', 'the database already books this fill state for the order',
            'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o)));
    END IF;
    IF NOT (o.status = ANY (recon.open_order_statuses())) THEN
        RAISE EXCEPTION '%: illegal transition for order % (trade %): it is % in the database; the exchange reports % filled (%)',
            p_handler, o.client_order_id, o.trade_id, o.status, v_filled, v_status;
    END IF;
    v_price := CASE WHEN v_delta = 0 THEN NULL
                    WHEN o.filled_qty = 0 OR o.avg_fill_price IS NULL THEN v_avg
                    ELSE (v_filled * v_avg - o.filled_qty * o.avg_fill_price) / v_delta END;
    IF v_delta > 0 AND v_price <= 0 THEN
        RAISE EXCEPTION '%: order %: the exchange average % over % filled is inconsistent with the database average % over %',
            p_handler, o.client_order_id, v_avg, v_filled, o.avg_fill_price, o.filled_qty;
    END IF;
    UPDATE public.orders
       SET status = v_status,
           filled_qty = v_filled,
           avg_fill_price = CASE WHEN v_delta > 0 THEN v_avg ELSE avg_fill_price END,
           exchange_order_id = COALESCE(exchange_order_id, r->>'exchange_order_id'),
           updated_at = pg_catalog.now()
     WHERE id = o.id
    RETURNING * INTO a;
    RETURN pg_catalog.jsonb_build_object(
        'status', 'changed', 'delta', v_delta, 'delta_price', v_price,
        'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o),
                                               'after', pg_catalog.to_jsonb(a)));
END;
$$;
