-- The slice an exit acts on (the parity heartbeat's synthetic exit, the EXIT backfill), locked
-- FOR UPDATE; refused (RCREF slice_not_found) when the profile has no such slice.
CREATE OR REPLACE FUNCTION recon._lock_slice(p_handler text, p_profile_id text, p_trade_id text,
                                             p_slice_no integer)
RETURNS public.trade_history
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    s public.trade_history%ROWTYPE;
BEGIN
    SELECT * INTO s FROM public.trade_history
     WHERE profile_id = p_profile_id AND trade_id = p_trade_id AND slice_no = p_slice_no
     FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'slice_not_found',
            MESSAGE = pg_catalog.format('%s: no slice %s of trade %s of profile %s',
                                        p_handler, p_slice_no, p_trade_id, p_profile_id);
    END IF;
    RETURN s;
END;
$$;

-- That the profile's database position on the slice's symbol can hold an exit of p_qty of the
-- slice (same side, at least that qty), locked FOR UPDATE; refused (RCREF position_would_flip)
-- otherwise: an operator must look at it.
CREATE OR REPLACE FUNCTION recon._lock_position_for_exit(p_handler text, s public.trade_history,
                                                         p_qty numeric)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    pos public.positions%ROWTYPE;
BEGIN
    SELECT * INTO pos FROM public.positions
     WHERE profile_id = s.profile_id AND symbol = s.symbol FOR UPDATE;
    IF NOT FOUND OR pos.side <> s.side OR pos.qty < p_qty THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'position_would_flip',
            MESSAGE = pg_catalog.format(
                '%s: the database position of %s on %s (%s) cannot hold the exit of %s %s of trade %s; an operator must look at it',
                p_handler, s.profile_id, s.symbol,
                COALESCE(pos.side || ' ' || pos.qty::text, 'none'), p_qty, s.side, s.trade_id);
    END IF;
END;
$$;
