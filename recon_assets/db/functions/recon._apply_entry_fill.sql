-- reconcileEntryFill: the order's new fills (recon._book_order_fill), the trade slice's entry
-- qty and weighted entry price (a new slice when the trade has none open), the fees of those
-- fills off the slice's realised PnL, the position (long for buy, short for sell). A fee without
-- a USD price (fee_usd NULL from recon._book_order_fill) leaves the PnL unknown: NULL, with
-- pnl_unknown_reason 'fee_unpriced' (migration 0019), never the known fees alone; the result's
-- pnl_unknown_reason is the slice's (NULL when its PnL is known).
CREATE OR REPLACE FUNCTION recon._apply_entry_fill(p_profile_id text, p_client_order_id text, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    h constant text := 'recon_reconcile_entry_fill';
    o public.orders%ROWTYPE;
    s public.trade_history%ROWTYPE;
    v_fill jsonb;
    v_side text;
    v_delta numeric;
    v_price numeric;
    v_fee numeric;
    v_slice_before jsonb;
    v_position jsonb;
    v_other text;
BEGIN
    o := recon._lock_order(h, p_profile_id, p_client_order_id, 'ENTRY', r->>'exchange_order_id');
    v_fill := recon._book_order_fill(h, o, r);
    IF v_fill->>'status' = 'unchanged' THEN
        RETURN v_fill || pg_catalog.jsonb_build_object('trade_id', o.trade_id);
    END IF;
    v_delta := (v_fill->>'delta')::numeric;
    v_price := (v_fill->>'delta_price')::numeric;
    v_fee := (v_fill->>'fee_usd')::numeric;
    v_side := CASE o.side WHEN 'buy' THEN 'long' ELSE 'short' END;
    IF v_delta > 0 THEN
        SELECT profile_id INTO v_other FROM public.trade_history
         WHERE trade_id = o.trade_id AND profile_id <> o.profile_id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION '%: order %: trade % has slices of profile %, not of profile %',
                h, o.client_order_id, o.trade_id, v_other, o.profile_id;
        END IF;
        SELECT * INTO s FROM public.trade_history
         WHERE trade_id = o.trade_id AND status = 'open'
         ORDER BY slice_no DESC LIMIT 1 FOR UPDATE;
        IF FOUND THEN
            IF s.symbol <> o.symbol OR s.side <> v_side THEN
                RAISE EXCEPTION '%: order % (% %) does not match the open slice % of trade % (% %)',
                    h, o.client_order_id, o.side, o.symbol, s.slice_no, o.trade_id, s.side, s.symbol;
            END IF;
            v_slice_before := pg_catalog.to_jsonb(s);
            UPDATE public.trade_history
               SET entry_price = (s.entry_qty * COALESCE(s.entry_price, 0) + v_delta * v_price)
                                 / (s.entry_qty + v_delta),
                   entry_qty = s.entry_qty + v_delta,
                   realised_pnl_usd = s.realised_pnl_usd - v_fee,
                   pnl_unknown_reason = CASE WHEN s.realised_pnl_usd IS NOT NULL AND v_fee IS NULL
                                             THEN 'fee_unpriced' ELSE s.pnl_unknown_reason END,
                   updated_at = pg_catalog.now()
             WHERE id = s.id
            RETURNING * INTO s;
        ELSE
            INSERT INTO public.trade_history (trade_id, slice_no, profile_id, symbol, side,
                                              entry_qty, entry_price, realised_pnl_usd,
                                              pnl_unknown_reason, opened_at)
            SELECT o.trade_id, COALESCE(pg_catalog.max(t.slice_no), 0) + 1, o.profile_id,
                   o.symbol, v_side, v_delta, v_price, -v_fee,
                   CASE WHEN v_fee IS NULL THEN 'fee_unpriced' END,
                   LEAST(pg_catalog.now(),
                         COALESCE((SELECT pg_catalog.min((e->>'filled_at')::timestamptz)
                                   FROM pg_catalog.jsonb_array_elements(
                                            COALESCE(r->'fills', '[]'::jsonb)) e),
                                  pg_catalog.now()))
              FROM public.trade_history t WHERE t.trade_id = o.trade_id
            RETURNING * INTO s;
        END IF;
        v_position := recon._apply_position_delta(
            o.profile_id, o.symbol, CASE v_side WHEN 'long' THEN v_delta ELSE -v_delta END, v_price);
    END IF;
    RETURN v_fill || pg_catalog.jsonb_build_object(
        'trade_id', o.trade_id,
        'slice', CASE WHEN v_delta > 0 THEN pg_catalog.jsonb_build_object(
                     'before', v_slice_before, 'after', pg_catalog.to_jsonb(s)) END,
        'position', v_position,
        'pnl_unknown_reason', CASE WHEN v_delta > 0 AND s.realised_pnl_usd IS NULL
                                   THEN s.pnl_unknown_reason END,
        'fee_usd', v_fee);
END;
$$;
