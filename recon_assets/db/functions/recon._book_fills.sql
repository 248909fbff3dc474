-- Book the order's fills into applied_fills (each fill once: the UNIQUE key). A fill already
-- booked for this order is skipped; one booked for another order is an error.
CREATE OR REPLACE FUNCTION recon._book_fills(p_handler text, o public.orders, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_fills jsonb := COALESCE(r->'fills', '[]'::jsonb);
    v_filled numeric := (r->>'filled_qty')::numeric;
    v_account text;
    v_sum numeric;
    v_ids integer;
    v_n integer;
    f jsonb;
    v_id bigint;
    v_other text;
    v_booked jsonb := '[]'::jsonb;
    v_already jsonb := '[]'::jsonb;
BEGIN
    IF pg_catalog.jsonb_typeof(v_fills) <> 'array' THEN
        RAISE EXCEPTION '%: order %: fills must be a JSON array', p_handler, o.client_order_id;
    END IF;
    v_n := pg_catalog.jsonb_array_length(v_fills);
    IF v_n = 0 THEN
        RETURN pg_catalog.jsonb_build_object('booked', v_booked, 'already_booked', v_already);
    END IF;
    SELECT pg_catalog.sum((e->>'qty')::numeric), pg_catalog.count(DISTINCT e->>'id')
      INTO v_sum, v_ids FROM pg_catalog.jsonb_array_elements(v_fills) e;
    IF v_ids <> v_n OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(v_fills) e
                               WHERE COALESCE(e->>'id', '') = ''
                                  OR (e->>'qty')::numeric IS NULL OR (e->>'qty')::numeric <= 0
                                  OR (e->>'price')::numeric IS NULL OR (e->>'price')::numeric < 0) THEN
        RAISE EXCEPTION '%: order %: every fill needs a distinct id, a qty > 0 and a price >= 0',
            p_handler, o.client_order_id;
    END IF;
    IF pg_catalog.abs(v_sum - v_filled) > 1e-9 * GREATEST(v_filled, 1) THEN
        RAISE EXCEPTION '%: order %: its fills add up to %, not to the % filled the exchange reports',
            p_handler, o.client_order_id, v_sum, v_filled;
    END IF;
    SELECT exchange_account INTO v_account FROM public.profiles WHERE id = o.profile_id;
    FOR f IN SELECT e FROM pg_catalog.jsonb_array_elements(v_fills) e ORDER BY e->>'id' LOOP
        v_id := NULL;
        INSERT INTO public.applied_fills (
            exchange_account, symbol, exchange_fill_id, exchange_order_id, client_order_id,
            profile_id, trade_id, side, qty, price, fee_usd, filled_at)
        VALUES (v_account, o.symbol, f->>'id',
                COALESCE(r->>'exchange_order_id', o.exchange_order_id), o.client_order_id,
                o.profile_id, o.trade_id, o.side, (f->>'qty')::numeric, (f->>'price')::numeric,
                COALESCE((f->>'fee_usd')::numeric, 0),
                COALESCE((f->>'filled_at')::timestamptz, pg_catalog.now()))
        ON CONFLICT (exchange_account, symbol, exchange_fill_id) DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NULL THEN
            SELECT client_order_id INTO v_other FROM public.applied_fills
             WHERE exchange_account = v_account AND symbol = o.symbol
               AND exchange_fill_id = f->>'id';
            IF v_other IS NOT NULL AND v_other <> o.client_order_id THEN
                RAISE EXCEPTION '%: fill % (%) is already booked to order %, not to order %',
                    p_handler, f->>'id', o.symbol, v_other, o.client_order_id;
            END IF;
            v_already := v_already || pg_catalog.to_jsonb(f->>'id');
        ELSE
            v_booked := v_booked || pg_catalog.to_jsonb(f->>'id');
        END IF;
    END LOOP;
    RETURN pg_catalog.jsonb_build_object('booked', v_booked, 'already_booked', v_already);
END;
$$;
