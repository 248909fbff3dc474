-- Move the profile's net position on a symbol by p_signed_qty (+ long, - short) at p_price.
-- Increasing keeps a weighted average price, reducing keeps it, flipping starts at p_price,
-- reaching zero removes the row.
CREATE OR REPLACE FUNCTION recon._apply_position_delta(
    p_profile_id text, p_symbol text, p_signed_qty numeric, p_price numeric)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    pos public.positions%ROWTYPE;
    v_before jsonb;
    v_after jsonb;
    v_cur numeric := 0;
    v_new numeric;
    v_avg numeric;
BEGIN
    SELECT * INTO pos FROM public.positions
     WHERE profile_id = p_profile_id AND symbol = p_symbol FOR UPDATE;
    IF FOUND THEN
        v_before := pg_catalog.to_jsonb(pos);
        v_cur := CASE pos.side WHEN 'long' THEN pos.qty ELSE -pos.qty END;
    END IF;
    v_new := v_cur + p_signed_qty;
    IF v_new = 0 THEN
        DELETE FROM public.positions WHERE profile_id = p_profile_id AND symbol = p_symbol;
        v_after := NULL;
    ELSE
        v_avg := CASE
            WHEN v_cur = 0 OR pg_catalog.sign(v_cur) <> pg_catalog.sign(v_new) THEN p_price
            WHEN pg_catalog.abs(v_new) > pg_catalog.abs(v_cur) THEN
                (pg_catalog.abs(v_cur) * pos.avg_price + pg_catalog.abs(p_signed_qty) * p_price)
                / pg_catalog.abs(v_new)
            ELSE pos.avg_price END;
        INSERT INTO public.positions AS p (profile_id, symbol, side, qty, avg_price, updated_at)
        VALUES (p_profile_id, p_symbol, CASE WHEN v_new > 0 THEN 'long' ELSE 'short' END,
                pg_catalog.abs(v_new), v_avg, pg_catalog.now())
        ON CONFLICT (profile_id, symbol) DO UPDATE
            SET side = EXCLUDED.side, qty = EXCLUDED.qty, avg_price = EXCLUDED.avg_price,
                updated_at = EXCLUDED.updated_at
        RETURNING pg_catalog.to_jsonb(p) INTO v_after;
    END IF;
    RETURN pg_catalog.jsonb_build_object('before', v_before, 'after', v_after);
END;
$$;
