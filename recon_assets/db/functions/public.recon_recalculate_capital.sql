-- Capital ledger: reserved_usd = sum over the trade's open slices of virtual_open_qty x
-- entry_price, one row per open trade of the profile; rows of trades without an open slice are
-- removed. Takes the profile's lock (re-entrant inside a handler's transaction).
CREATE OR REPLACE FUNCTION public.recon_recalculate_capital(p_profile_id text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_removed integer;
    v_trades integer;
    v_total numeric;
BEGIN
    PERFORM recon._lock_profile(p_profile_id);
    DELETE FROM public.capital_ledger l
    WHERE l.profile_id = p_profile_id
      AND NOT EXISTS (SELECT 1 FROM public.trade_history t
                      WHERE t.profile_id = p_profile_id AND t.trade_id = l.trade_id
                        AND t.status = 'open');
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    INSERT INTO public.capital_ledger AS l (profile_id, trade_id, reserved_usd, updated_at)
    SELECT p_profile_id, t.trade_id,
           pg_catalog.sum(t.virtual_open_qty * COALESCE(t.entry_price, 0)), pg_catalog.now()
    FROM public.trade_history t
    WHERE t.profile_id = p_profile_id AND t.status = 'open'
    GROUP BY t.trade_id
    ON CONFLICT (profile_id, trade_id) DO UPDATE
        SET reserved_usd = EXCLUDED.reserved_usd, updated_at = EXCLUDED.updated_at;
    SELECT pg_catalog.count(*), COALESCE(pg_catalog.sum(reserved_usd), 0)
      INTO v_trades, v_total
      FROM public.capital_ledger WHERE profile_id = p_profile_id;
    RETURN pg_catalog.jsonb_build_object('profile_id', p_profile_id, 'open_trades', v_trades,
                                         'reserved_usd', v_total, 'rows_removed', v_removed);
END;
$$;
