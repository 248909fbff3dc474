-- The EXIT backfill (handler exit_backfill): one real exchange fill, read from the exchange
-- fills recon has stored (recon.exchange_fills: its price, time, fee and ids, as numeric), booked
-- as an exit of one open slice whose exit the database never recorded. The accounting is
-- reconcileExitFill's (recon._apply_exit_fill) for an order the database does not hold: the
-- slice exits the fill's qty at the fill's price less its fee (recon._exit_slice; closed with
-- close reason 'exit_fill_backfilled' when nothing stays open, else the rest stays open), the
-- position moves by the same qty, and the fill is booked in applied_fills under its own id, so
-- the position stays the sum of its booked fills and no fill is booked twice.
--
-- Refused (SQLSTATE RCREF, the reason in DETAIL; nothing changes) when:
--   slice_not_found       no such slice of the profile
--   fill_not_found        recon has no such fill of the profile's account
--   fill_already_booked   applied_fills holds the fill (booked by the trading app or a handler)
--   fill_does_not_fit     the fill is not an exit of the slice (symbol, side), or its qty
--                         exceeds the slice's open qty (a fill is never split)
--   fee_unpriced          the fill paid a fee in an asset recon could not price in USD yet
--   position_would_flip   the database's position cannot hold the exit
--   fill_booked_concurrently  another writer booked the fill during this correction
-- A slice no longer open is "unchanged".
CREATE OR REPLACE FUNCTION recon._apply_exit_backfill(p_profile_id text, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    h constant text := 'recon_exit_backfill';
    s public.trade_history%ROWTYPE;
    f recon.exchange_fills%ROWTYPE;
    v_account text;
    v_exit jsonb;
    v_position jsonb;
    v_inserted integer;
BEGIN
    SELECT exchange_account INTO v_account FROM public.profiles WHERE id = p_profile_id;
    s := recon._lock_slice(h, p_profile_id, r->>'trade_id', (r->>'slice_no')::integer);
    SELECT * INTO f FROM recon.exchange_fills
     WHERE exchange_account = v_account AND symbol = r->>'symbol'
       AND exchange_fill_id = r->>'exchange_fill_id';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'fill_not_found',
            MESSAGE = pg_catalog.format('%s: recon holds no fill %s on %s of account %s',
                                        h, r->>'exchange_fill_id', r->>'symbol', v_account);
    END IF;
    IF EXISTS (SELECT 1 FROM public.applied_fills
               WHERE exchange_account = v_account AND symbol = f.symbol
                 AND exchange_fill_id = f.exchange_fill_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'fill_already_booked',
            MESSAGE = pg_catalog.format(
                '%s: fill %s on %s is booked in applied_fills already; nothing is booked twice',
                h, f.exchange_fill_id, f.symbol);
    END IF;
    -- recon.exchange_fills' CHECKs (qty > 0, price >= 0) let NaN and Infinity through: such a
    -- stored fill is corrupt, never booked.
    IF f.qty IN ('NaN', 'Infinity') OR f.price IN ('NaN', 'Infinity')
       OR f.fee_usd IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION '%: fill % on % has a qty, price or fee that is not a finite number (%, %, %); it is not booked',
            h, f.exchange_fill_id, f.symbol, f.qty, f.price, f.fee_usd;
    END IF;
    IF s.status <> 'open' OR s.virtual_open_qty <= 0 THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'unchanged', 'trade_id', s.trade_id,
            'reason', 'the slice is no longer open', 'slice', pg_catalog.to_jsonb(s));
    END IF;
    IF f.symbol <> s.symbol OR (s.side = 'long' AND f.side <> 'sell')
       OR (s.side = 'short' AND f.side <> 'buy') OR f.qty > s.virtual_open_qty THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'fill_does_not_fit',
            MESSAGE = pg_catalog.format(
                '%s: fill %s (%s %s %s) is no exit of slice %s of trade %s (%s %s, %s open)',
                h, f.exchange_fill_id, f.side, f.qty, f.symbol, s.slice_no, s.trade_id, s.side,
                s.symbol, s.virtual_open_qty);
    END IF;
    IF f.fee_usd IS NULL AND COALESCE(f.fee_amount, 0) <> 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'fee_unpriced',
            MESSAGE = pg_catalog.format(
                '%s: fill %s paid %s %s, which recon has not priced in USD yet; the next cycle looks again',
                h, f.exchange_fill_id, f.fee_amount, f.fee_asset);
    END IF;
    PERFORM recon._lock_position_for_exit(h, s, f.qty);
    v_exit := recon._exit_slice(h, s, f.qty, f.price, COALESCE(f.fee_usd, 0),
                                'exit_fill_backfilled');
    v_position := recon._apply_position_delta(
        p_profile_id, s.symbol, CASE s.side WHEN 'long' THEN -f.qty ELSE f.qty END, f.price);
    INSERT INTO public.applied_fills (
        exchange_account, symbol, exchange_fill_id, exchange_order_id, client_order_id,
        profile_id, trade_id, side, qty, price, fee_usd, fee_asset, fee_amount, filled_at)
    VALUES (v_account, f.symbol, f.exchange_fill_id, f.exchange_order_id, f.client_order_id,
            p_profile_id, s.trade_id, f.side, f.qty, f.price, COALESCE(f.fee_usd, 0),
            f.fee_asset, f.fee_amount, f.filled_at)
    ON CONFLICT (exchange_account, symbol, exchange_fill_id) DO NOTHING;
    GET DIAGNOSTICS v_inserted = ROW_COUNT;
    IF v_inserted <> 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'fill_booked_concurrently',
            MESSAGE = pg_catalog.format(
                '%s: fill %s was booked by another writer during this correction; nothing is booked',
                h, f.exchange_fill_id);
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'status', 'changed', 'trade_id', s.trade_id, 'slice_no', s.slice_no,
        'qty', f.qty, 'price', f.price, 'fee_usd', COALESCE(f.fee_usd, 0),
        'filled_at', f.filled_at, 'exchange_fill_id', f.exchange_fill_id,
        'exchange_order_id', f.exchange_order_id, 'fill_client_order_id', f.client_order_id,
        'slice', v_exit->'slice', 'realised_pnl_usd', v_exit->'realised_pnl_usd',
        'position', v_position,
        'fills', pg_catalog.jsonb_build_object(
            'booked', pg_catalog.jsonb_build_array(f.exchange_fill_id),
            'already_booked', '[]'::jsonb));
END;
$$;

-- The public entry point (psycopg SELECT or supabase-py rpc()): the correction frame of
-- recon._run_correction (lock, gate owner, idempotency, dry run, record) around it.
CREATE OR REPLACE FUNCTION public.recon_exit_backfill(
    p_profile_id text,
    p_cycle_id text,
    p_idempotency_key text,
    p_trade_id text,
    p_slice_no integer,
    p_symbol text,
    p_exchange_fill_id text,
    p_dry_run boolean DEFAULT false,
    p_evidence jsonb DEFAULT '{}'::jsonb)
RETURNS jsonb
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT recon._run_correction(
        'exit_backfill', p_profile_id, p_cycle_id, p_idempotency_key, NULL, p_dry_run,
        p_evidence,
        pg_catalog.jsonb_build_object('trade_id', p_trade_id, 'slice_no', p_slice_no,
                                      'symbol', p_symbol, 'exchange_fill_id', p_exchange_fill_id));
$$;
