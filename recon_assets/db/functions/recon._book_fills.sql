-- The fills of an order, as the fill handlers take them (see recon._book_order_fill.sql):
--   recon._check_fills(...)  every fill has a distinct id, a finite qty > 0, a finite price >= 0
--                            and a finite fee (or none), and
--                            together they add up to the exchange's filled qty
--   recon._book_fills(...)   books the fills not booked yet into applied_fills, each once

-- Until issue 10, _book_fills(text, orders, jsonb) checked and booked every fill of the order.
DROP FUNCTION IF EXISTS recon._book_fills(text, public.orders, jsonb);

CREATE OR REPLACE FUNCTION recon._check_fills(p_handler text, o public.orders, p_fills jsonb,
                                              p_filled numeric)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_sum numeric;
    v_ids integer;
    v_n integer;
BEGIN
    IF pg_catalog.jsonb_typeof(p_fills) <> 'array' THEN
        RAISE EXCEPTION '%: order %: fills must be a JSON array', p_handler, o.client_order_id;
    END IF;
    v_n := pg_catalog.jsonb_array_length(p_fills);
    IF v_n = 0 THEN
        RETURN;
    END IF;
    SELECT pg_catalog.sum((e->>'qty')::numeric), pg_catalog.count(DISTINCT e->>'id')
      INTO v_sum, v_ids FROM pg_catalog.jsonb_array_elements(p_fills) e;
    IF v_ids <> v_n OR EXISTS (SELECT 1 FROM pg_catalog.jsonb_array_elements(p_fills) e
                               WHERE COALESCE(e->>'id', '') = ''
                                  OR (e->>'qty')::numeric IS NULL OR (e->>'qty')::numeric <= 0
                                  OR (e->>'price')::numeric IS NULL OR (e->>'price')::numeric < 0
                                  -- NaN and Infinity pass those comparisons in Postgres
                                  OR (e->>'qty')::numeric IN ('NaN', 'Infinity')
                                  OR (e->>'price')::numeric IN ('NaN', 'Infinity')
                                  OR (e->>'fee_usd')::numeric IN ('NaN', 'Infinity', '-Infinity')
                                  OR (e->>'fee_amount')::numeric IN ('NaN', 'Infinity', '-Infinity')) THEN
        RAISE EXCEPTION '%: order %: every fill needs a distinct id, a finite qty > 0, a finite price >= 0 and a finite fee',
            p_handler, o.client_order_id;
    END IF;
    IF pg_catalog.abs(v_sum - p_filled) > 1e-9 * GREATEST(p_filled, 1) THEN
        RAISE EXCEPTION '%: order %: its fills add up to %, not to the % filled the exchange reports',
            p_handler, o.client_order_id, v_sum, p_filled;
    END IF;
END;
$$;

-- Book `p_new` (fills the caller found not booked yet) into applied_fills. A fill that is there
-- after all was booked by another writer since the check (the trading app takes no reconciliation
-- lock): the whole correction is refused rather than booking around it.
CREATE OR REPLACE FUNCTION recon._book_fills(p_handler text, o public.orders, p_account text,
                                             p_exchange_order_id text, p_new jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_inserted integer;
BEGIN
    INSERT INTO public.applied_fills (
        exchange_account, symbol, exchange_fill_id, exchange_order_id, client_order_id,
        profile_id, trade_id, side, qty, price, fee_usd, fee_asset, fee_amount, filled_at)
    SELECT p_account, o.symbol, e->>'id', p_exchange_order_id, o.client_order_id, o.profile_id,
           o.trade_id, o.side, (e->>'qty')::numeric, (e->>'price')::numeric,
           (e->>'fee_usd')::numeric, e->>'fee_asset', (e->>'fee_amount')::numeric,
           COALESCE((e->>'filled_at')::timestamptz, pg_catalog.now())
      FROM pg_catalog.jsonb_array_elements(p_new) e
    ON CONFLICT (exchange_account, symbol, exchange_fill_id) DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted <> pg_catalog.jsonb_array_length(p_new) THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'fill_booked_concurrently',
            MESSAGE = pg_catalog.format(
                '%s: order %s: a fill was booked by another writer during this correction; nothing is booked, the next cycle looks again',
                p_handler, o.client_order_id);
    END IF;
END;
$$;
