-- The parity heartbeat's synthetic EXIT of a confirmed, attributed ghost slice (the runbook's
-- last resort), only as the heartbeat recorded it (recon.parity_checks row r.check_id decided
-- this exit under this key, at this qty and mark price; otherwise refused, no_recorded_decision
-- or not_the_recorded_decision): the whole open qty of the slice exits at the mark price of the cycle's exchange
-- snapshot (at the moment of that check, p_exited_at), with close reason 'parity_synthetic_exit';
-- the position moves by the same qty; a
-- synthetic fill (exchange_fill_id 'synthetic:<idempotency key>', no exchange order, no fee) is
-- booked in applied_fills so the position stays the sum of its booked fills, and an analyst tells
-- it from a real one by that id and the close reason. Refused (RCREF) when the slice is not
-- found (slice_not_found), changed since the check (slice_changed), its trade has an EXIT order
-- in an open status (exit_order_open: real evidence first, the lifecycle correction resolves
-- it), or the database's position cannot hold the exit (position_would_flip). "unchanged" when
-- the slice is already closed, or when a newer heartbeat check of the slice than the one the exit
-- was decided in (r.check_id) did not decide this very exit (superseded: the newest evidence
-- cleared, held or re-decided it; the next decision stands).
CREATE OR REPLACE FUNCTION recon._apply_synthetic_exit(p_profile_id text, p_key text, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    h constant text := 'recon_synthetic_exit';
    s public.trade_history%ROWTYPE;
    v_qty numeric := (r->>'qty')::numeric;
    v_price numeric := (r->>'price')::numeric;
    v_account text;
    v_fill_id text := 'synthetic:' || p_key;
    v_exit jsonb;
    v_position jsonb;
    c recon.parity_checks%ROWTYPE;
    d recon.parity_checks%ROWTYPE;
    v_open_exit record;
BEGIN
    -- (NaN and Infinity are numerics greater than every number in Postgres: refused too.)
    IF v_qty IS NULL OR v_qty <= 0 OR v_price IS NULL OR v_price <= 0
       OR v_qty IN ('NaN', 'Infinity') OR v_price IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION '%: a finite qty > 0 and a finite price > 0 are required (got %, %)', h, v_qty, v_price;
    END IF;
    -- Evidence, not the caller: the exit applies the heartbeat's recorded decision (check
    -- r.check_id decided this very exit, under this key, of this slice), at the qty it checked
    -- and the mark price it recorded; invented arguments are refused.
    IF r->>'check_id' IS NOT NULL THEN
        SELECT * INTO d FROM recon.parity_checks WHERE id = (r->>'check_id')::bigint;
    END IF;
    IF d.id IS NULL OR d.profile_id <> p_profile_id OR d.trade_id <> r->>'trade_id'
       OR d.slice_no <> (r->>'slice_no')::integer OR d.decision <> 'synthetic_exit'
       OR d.idempotency_key IS DISTINCT FROM p_key THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'no_recorded_decision',
            MESSAGE = pg_catalog.format(
                '%s: no heartbeat check %s decided the synthetic exit %s of slice %s of trade %s of %s: only a recorded decision is applied',
                h, COALESCE(r->>'check_id', '(none given)'), p_key, r->>'slice_no',
                r->>'trade_id', p_profile_id);
    END IF;
    IF d.virtual_open_qty IS DISTINCT FROM v_qty OR d.mark_price IS DISTINCT FROM v_price THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'not_the_recorded_decision',
            MESSAGE = pg_catalog.format(
                '%s: check %s decided the exit of %s at %s, not of %s at %s: only the recorded qty and price are applied',
                h, d.id, d.virtual_open_qty, d.mark_price, v_qty, v_price);
    END IF;
    s := recon._lock_slice(h, p_profile_id, r->>'trade_id', (r->>'slice_no')::integer);
    IF s.status <> 'open' OR s.virtual_open_qty <= 0 THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'unchanged', 'trade_id', s.trade_id,
            'reason', 'the slice is no longer open', 'slice', pg_catalog.to_jsonb(s));
    END IF;
    -- Act on the newest evidence: the slice's latest check must still decide this exit.
    IF r->>'check_id' IS NOT NULL THEN
        SELECT * INTO c FROM recon.parity_checks
         WHERE profile_id = p_profile_id AND trade_id = s.trade_id AND slice_no = s.slice_no
         ORDER BY id DESC LIMIT 1;
        IF FOUND AND c.id > (r->>'check_id')::bigint
           AND (c.decision <> 'synthetic_exit' OR c.idempotency_key IS DISTINCT FROM p_key) THEN
            RETURN pg_catalog.jsonb_build_object(
                'status', 'unchanged', 'trade_id', s.trade_id, 'slice_no', s.slice_no,
                'reason', pg_catalog.format(
                    'superseded: the newer check %s (cycle %s) decided %s: %s',
                    c.id, c.cycle_id, c.decision, c.reason));
        END IF;
    END IF;
    SELECT o.client_order_id, o.status INTO v_open_exit FROM public.orders o
     WHERE o.profile_id = p_profile_id AND o.trade_id = s.trade_id AND o.intent = 'EXIT'
       AND o.status = ANY (recon.open_order_statuses())
     ORDER BY o.client_order_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'exit_order_open',
            MESSAGE = pg_catalog.format(
                '%s: trade %s has the EXIT order %s %s in the database: no synthetic exit while the lifecycle has not resolved it',
                h, s.trade_id, v_open_exit.client_order_id, v_open_exit.status);
    END IF;
    IF pg_catalog.abs(s.virtual_open_qty - v_qty) > 1e-9 * GREATEST(v_qty, 1) THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'slice_changed',
            MESSAGE = pg_catalog.format(
                '%s: slice %s of trade %s has %s open, the heartbeat checked %s: it changed since; the next cycle checks again',
                h, s.slice_no, s.trade_id, s.virtual_open_qty, v_qty);
    END IF;
    PERFORM recon._lock_position_for_exit(h, s, s.virtual_open_qty);
    v_qty := s.virtual_open_qty;  -- the database's exact qty
    v_exit := recon._exit_slice(h, s, v_qty, v_price, 0, 'parity_synthetic_exit');
    v_position := recon._apply_position_delta(
        p_profile_id, s.symbol, CASE s.side WHEN 'long' THEN -v_qty ELSE v_qty END, v_price);
    SELECT exchange_account INTO v_account FROM public.profiles WHERE id = p_profile_id;
    INSERT INTO public.applied_fills (exchange_account, symbol, exchange_fill_id, profile_id,
                                      trade_id, side, qty, price, fee_usd, fee_amount, filled_at)
    VALUES (v_account, s.symbol, v_fill_id, p_profile_id, s.trade_id,
            CASE s.side WHEN 'long' THEN 'sell' ELSE 'buy' END, v_qty, v_price, 0, 0,
            COALESCE((r->>'exited_at')::timestamptz, pg_catalog.now()));
    RETURN pg_catalog.jsonb_build_object(
        'status', 'changed', 'trade_id', s.trade_id, 'slice_no', s.slice_no,
        'qty', v_qty, 'price', v_price, 'price_source', r->>'price_source',
        'slice', v_exit->'slice', 'realised_pnl_usd', v_exit->'realised_pnl_usd',
        'position', v_position,
        'fills', pg_catalog.jsonb_build_object('booked', pg_catalog.jsonb_build_array(v_fill_id),
                                               'already_booked', '[]'::jsonb));
END;
$$;

-- The public entry point (psycopg SELECT or supabase-py rpc()): the correction frame of
-- recon._run_correction (lock, gate owner, idempotency, dry run, record) around it.
-- p_check_id: the heartbeat check the exit was decided in (recon.parity_checks.id), required:
-- the exit it recorded is the one applied; a newer check that decided otherwise supersedes it.
DROP FUNCTION IF EXISTS public.recon_synthetic_exit(text, text, text, text, integer, numeric,
                                                    numeric, text, boolean, jsonb, timestamptz);

CREATE OR REPLACE FUNCTION public.recon_synthetic_exit(
    p_profile_id text,
    p_cycle_id text,
    p_idempotency_key text,
    p_trade_id text,
    p_slice_no integer,
    p_qty numeric,
    p_price numeric,
    p_price_source text DEFAULT 'mark_price',
    p_dry_run boolean DEFAULT false,
    p_evidence jsonb DEFAULT '{}'::jsonb,
    p_exited_at timestamptz DEFAULT NULL,
    p_check_id bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT recon._run_correction(
        'synthetic_exit', p_profile_id, p_cycle_id, p_idempotency_key, NULL, p_dry_run,
        p_evidence,
        pg_catalog.jsonb_build_object('trade_id', p_trade_id, 'slice_no', p_slice_no,
                                      'qty', p_qty, 'price', p_price,
                                      'price_source', p_price_source,
                                      'exited_at', p_exited_at, 'check_id', p_check_id));
$$;
