-- In one transaction: stores an account's newly read exchange fills (once each), fills in the
-- client_order_ids learnt this cycle, moves the fill cursors (and the income cursor, when the
-- income history was swept), and reads the account's fills since p_window_start
-- (FillStore.save_and_read_window). Returns {"inserted": fills newly stored, "fills": [the
-- window's fills, qty/price/fee_usd/fee_amount as float8, by filled_at, symbol, fill id; a
-- fill's position_side only when its leg is known: a fill stored before migration 0020 has
-- none, and the exchange snapshot decides what that means (core.frames.with_fill_legs)]}.
--   p_fills          [{symbol, exchange_fill_id, exchange_order_id, client_order_id, side, qty,
--                      price, fee_usd, fee_asset, fee_amount, filled_at, position_side}, ...];
--                     qty and price are float8 text (stored through float8, as before), fee_usd
--                     and fee_amount exact numeric text, either may be null; position_side the
--                     fill's leg (both, long, short), null when unknown
--   p_cursors        [{symbol, last_fill_id, last_fill_at, activity_key, read_at}, ...]
--   p_learnt         {exchange order id: client_order_id}
--   p_income_cursor  {last_income_ms, swept_at}, or null when the income history was not swept
CREATE OR REPLACE FUNCTION public.recon_save_and_read_fill_window(
    p_account text, p_run_id text, p_fills jsonb, p_cursors jsonb, p_learnt jsonb,
    p_window_start timestamptz, p_income_cursor jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_fill jsonb;
    v_cursor jsonb;
    v_learnt record;
    v_new boolean;
    v_inserted integer := 0;
BEGIN
    FOR v_fill IN SELECT e.value FROM pg_catalog.jsonb_array_elements(COALESCE(p_fills, '[]'))
                                        WITH ORDINALITY AS e(value, n) ORDER BY e.n
    LOOP
        INSERT INTO recon.exchange_fills
               (exchange_account, symbol, exchange_fill_id, exchange_order_id, client_order_id,
                side, qty, price, fee_usd, fee_asset, fee_amount, filled_at, first_seen_run_id,
                position_side)
        VALUES (p_account, v_fill ->> 'symbol', v_fill ->> 'exchange_fill_id',
                v_fill ->> 'exchange_order_id', v_fill ->> 'client_order_id', v_fill ->> 'side',
                (v_fill ->> 'qty')::float8, (v_fill ->> 'price')::float8,
                (v_fill ->> 'fee_usd')::numeric, v_fill ->> 'fee_asset',
                (v_fill ->> 'fee_amount')::numeric, (v_fill ->> 'filled_at')::timestamptz,
                p_run_id, v_fill ->> 'position_side')
        ON CONFLICT (exchange_account, symbol, exchange_fill_id) DO UPDATE
        SET client_order_id = COALESCE(recon.exchange_fills.client_order_id,
                                       EXCLUDED.client_order_id),
            -- a fee whose price was unknown when first read, priced later
            fee_usd = COALESCE(recon.exchange_fills.fee_usd, EXCLUDED.fee_usd),
            -- a fill stored before its leg was kept (migration 0020), read again
            position_side = COALESCE(recon.exchange_fills.position_side,
                                     EXCLUDED.position_side)
        RETURNING (xmax = 0) INTO v_new;
        v_inserted := v_inserted + v_new::integer;
    END LOOP;

    FOR v_cursor IN SELECT e.value FROM pg_catalog.jsonb_array_elements(COALESCE(p_cursors, '[]'))
                                          WITH ORDINALITY AS e(value, n) ORDER BY e.n
    LOOP
        INSERT INTO recon.exchange_fill_cursors
               (exchange_account, symbol, last_fill_id, last_fill_at, activity_key, read_at, run_id)
        VALUES (p_account, v_cursor ->> 'symbol', (v_cursor ->> 'last_fill_id')::bigint,
                (v_cursor ->> 'last_fill_at')::timestamptz, v_cursor ->> 'activity_key',
                (v_cursor ->> 'read_at')::timestamptz, p_run_id)
        ON CONFLICT (exchange_account, symbol) DO UPDATE SET
            last_fill_id = GREATEST(recon.exchange_fill_cursors.last_fill_id,
                                    EXCLUDED.last_fill_id),
            last_fill_at = COALESCE(EXCLUDED.last_fill_at,
                                    recon.exchange_fill_cursors.last_fill_at),
            activity_key = EXCLUDED.activity_key,
            read_at = EXCLUDED.read_at, run_id = EXCLUDED.run_id;
    END LOOP;

    IF p_income_cursor IS NOT NULL AND p_income_cursor <> 'null'::jsonb THEN
        INSERT INTO recon.exchange_income_cursors (exchange_account, last_income_ms, swept_at, run_id)
        VALUES (p_account, (p_income_cursor ->> 'last_income_ms')::bigint,
                (p_income_cursor ->> 'swept_at')::timestamptz, p_run_id)
        ON CONFLICT (exchange_account) DO UPDATE SET
            last_income_ms = GREATEST(recon.exchange_income_cursors.last_income_ms,
                                      EXCLUDED.last_income_ms),
            swept_at = EXCLUDED.swept_at, run_id = EXCLUDED.run_id;
    END IF;

    -- Fills whose order was unknown before: the order ids learnt this cycle resolve them.
    FOR v_learnt IN SELECT l.key, l.value
                      FROM pg_catalog.jsonb_each_text(COALESCE(p_learnt, '{}')) AS l
    LOOP
        UPDATE recon.exchange_fills SET client_order_id = v_learnt.value
         WHERE exchange_account = p_account AND exchange_order_id = v_learnt.key
           AND client_order_id IS NULL;
    END LOOP;

    RETURN pg_catalog.jsonb_build_object(
        'inserted', v_inserted,
        'fills', COALESCE((
            SELECT pg_catalog.jsonb_agg(CASE WHEN w.position_side IS NULL
                                             THEN pg_catalog.to_jsonb(w) - 'position_side'
                                             ELSE pg_catalog.to_jsonb(w) END
                                        ORDER BY w.filled_at, w.symbol, w.exchange_fill_id)
            FROM (SELECT f.exchange_account, f.symbol, f.exchange_fill_id, f.exchange_order_id,
                         f.client_order_id, f.side, f.qty::float8 AS qty,
                         f.price::float8 AS price, f.fee_usd::float8 AS fee_usd, f.fee_asset,
                         f.fee_amount::float8 AS fee_amount, f.filled_at, f.position_side
                  FROM recon.exchange_fills f
                  WHERE f.exchange_account = p_account AND f.filled_at >= p_window_start) w),
            '[]'::jsonb));
END;
$$;
