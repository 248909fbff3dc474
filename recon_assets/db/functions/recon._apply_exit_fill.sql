-- reconcileExitFill: the order's new fills (recon._book_order_fill), the oldest open slice of
-- the trade (exit qty, weighted exit price, realised PnL net of the fills' fees, unknown (NULL)
-- when a fee has no USD price (recon._exit_slice); closed when its virtual open qty reaches
-- zero), the position. The result's pnl_unknown_reason is the slice's (NULL when its PnL is
-- known), unpriced_fills the fills that made it unknown.
CREATE OR REPLACE FUNCTION recon._apply_exit_fill(p_profile_id text, p_client_order_id text, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    h constant text := 'recon_reconcile_exit_fill';
    o public.orders%ROWTYPE;
    s public.trade_history%ROWTYPE;
    v_fill jsonb;
    v_delta numeric;
    v_price numeric;
    v_fee numeric;
    v_exit jsonb;
    v_position jsonb;
BEGIN
    o := recon._lock_order(h, p_profile_id, p_client_order_id, 'EXIT', r->>'exchange_order_id');
    v_fill := recon._book_order_fill(h, o, r);
    IF v_fill->>'status' = 'unchanged' THEN
        RETURN v_fill || pg_catalog.jsonb_build_object('trade_id', o.trade_id);
    END IF;
    v_delta := (v_fill->>'delta')::numeric;
    v_price := (v_fill->>'delta_price')::numeric;
    v_fee := (v_fill->>'fee_usd')::numeric;
    IF v_delta > 0 THEN
        SELECT * INTO s FROM public.trade_history
         WHERE trade_id = o.trade_id AND profile_id = o.profile_id AND status = 'open'
           AND virtual_open_qty > 0
         ORDER BY slice_no LIMIT 1 FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION '%: exit order % has no open slice of trade % (profile %) to exit',
                h, o.client_order_id, o.trade_id, o.profile_id;
        END IF;
        IF s.symbol <> o.symbol
           OR (s.side = 'long' AND o.side <> 'sell') OR (s.side = 'short' AND o.side <> 'buy') THEN
            RAISE EXCEPTION '%: exit order % (% %) cannot exit slice % of trade % (% %)',
                h, o.client_order_id, o.side, o.symbol, s.slice_no, o.trade_id, s.side, s.symbol;
        END IF;
        IF v_delta > s.virtual_open_qty THEN
            RAISE EXCEPTION '%: exit fill of % on order % exceeds the open qty % of trade % slice % (entry %, exit %)',
                h, v_delta, o.client_order_id, s.virtual_open_qty, o.trade_id, s.slice_no,
                s.entry_qty, s.exit_qty;
        END IF;
        v_exit := recon._exit_slice(h, s, v_delta, v_price, v_fee,
                                    COALESCE(r->>'close_reason', 'reconciled_exit_fill'));
        v_position := recon._apply_position_delta(
            o.profile_id, o.symbol, CASE s.side WHEN 'long' THEN -v_delta ELSE v_delta END, v_price);
    END IF;
    RETURN v_fill || pg_catalog.jsonb_build_object(
        'trade_id', o.trade_id,
        'slice', v_exit->'slice',
        'position', v_position,
        'realised_pnl_usd', v_exit->'realised_pnl_usd',
        'pnl_unknown_reason', v_exit->'pnl_unknown_reason',
        'fee_usd', v_fee);
END;
$$;
