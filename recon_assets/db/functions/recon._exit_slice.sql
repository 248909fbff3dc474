-- How an exit moves a lifecycle slice, for every kind of exit (a real exit fill, a synthetic exit
-- of the parity heartbeat): exit qty up by p_qty at p_price (weighted exit price), realised PnL
-- by the price difference times the qty less p_fee_usd, closed with p_close_reason when nothing
-- stays open. The caller holds the slice FOR UPDATE and has checked p_qty against its open qty.
-- p_fee_usd NULL is a fee of unknown USD value (pass 0 for no fee): unknown is never zero, so the
-- slice's realised PnL becomes NULL with pnl_unknown_reason 'fee_unpriced' (migration 0019). A
-- slice whose PnL is already unknown stays unknown, whatever this exit's fee: NULL + x is NULL.
-- Returns {"slice": {"before", "after"}, "realised_pnl_usd" (this exit's own PnL, NULL when its
-- fee is unknown), "pnl_unknown_reason" (the slice's, NULL when its PnL is known)}.
CREATE OR REPLACE FUNCTION recon._exit_slice(
    p_handler text, s public.trade_history, p_qty numeric, p_price numeric, p_fee_usd numeric,
    p_close_reason text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_pnl numeric;
    v_closes boolean;
    a public.trade_history%ROWTYPE;
BEGIN
    IF p_qty > s.virtual_open_qty THEN
        RAISE EXCEPTION '%: exit of % exceeds the open qty % of trade % slice % (entry %, exit %)',
            p_handler, p_qty, s.virtual_open_qty, s.trade_id, s.slice_no, s.entry_qty, s.exit_qty;
    END IF;
    IF s.entry_price IS NULL THEN
        RAISE EXCEPTION '%: slice % of trade % has no entry price, so no PnL can be booked',
            p_handler, s.slice_no, s.trade_id;
    END IF;
    v_pnl := CASE s.side WHEN 'long' THEN p_price - s.entry_price
                         ELSE s.entry_price - p_price END * p_qty - p_fee_usd;
    v_closes := s.exit_qty + p_qty = s.entry_qty;
    UPDATE public.trade_history
       SET exit_price = (s.exit_qty * COALESCE(s.exit_price, 0) + p_qty * p_price)
                        / (s.exit_qty + p_qty),
           exit_qty = s.exit_qty + p_qty,
           realised_pnl_usd = s.realised_pnl_usd + v_pnl,
           pnl_unknown_reason = CASE WHEN s.realised_pnl_usd IS NOT NULL AND v_pnl IS NULL
                                     THEN 'fee_unpriced' ELSE s.pnl_unknown_reason END,
           status = CASE WHEN v_closes THEN 'closed' ELSE 'open' END,
           closed_at = CASE WHEN v_closes THEN pg_catalog.now() END,
           close_reason = CASE WHEN v_closes THEN p_close_reason ELSE s.close_reason END,
           updated_at = pg_catalog.now()
     WHERE id = s.id
    RETURNING * INTO a;
    RETURN pg_catalog.jsonb_build_object(
        'slice', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(s),
                                               'after', pg_catalog.to_jsonb(a)),
        'realised_pnl_usd', v_pnl,
        'pnl_unknown_reason', CASE WHEN a.realised_pnl_usd IS NULL THEN a.pnl_unknown_reason END);
END;
$$;
