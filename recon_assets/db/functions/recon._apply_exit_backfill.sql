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
--   no_recorded_decision  r.decision_id is no recorded decision about this fill and slice that
--                         is GO, or assignable and approved by an operator's latest review
--                         (the caller's arguments are never trusted on their own)
--   slice_not_found       no such slice of the profile
--   fill_not_found        recon has no such fill of the profile's account
--   fill_already_booked   applied_fills holds the fill (booked by the trading app or a handler)
--   fill_does_not_fit     the fill is not an exit of the slice (symbol, side; in hedge mode
--                         its leg: a sell that opened a short exits no long), or its qty
--                         exceeds the slice's open qty (a fill is never split)
--   fee_unpriced          the fill paid a fee in an asset recon could not price in USD yet
--   position_would_flip   the database's position cannot hold the exit
--   fill_booked_concurrently  another writer booked the fill during this correction
-- A slice no longer open is "unchanged"; so is a decision (r.decision_id) that a newer cycle's
-- EXIT backfill superseded: when a cycle of the account newer than the decision's has recorded
-- its backfill and heartbeat, its decision about the fill must still be this pair, assignable,
-- and GO or approved by an operator (act on the newest evidence).
-- Whether an operator's latest review of the pair (fill f, slice s) approves it.
CREATE OR REPLACE FUNCTION recon._backfill_approved(
    p_account text, f recon.exchange_fills, s public.trade_history)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = ''
AS $$
    SELECT COALESCE((
        SELECT v.verdict = 'approve' FROM recon.backfill_reviews v
         WHERE v.exchange_account = p_account AND v.symbol = f.symbol
           AND v.exchange_fill_id = f.exchange_fill_id AND v.profile_id = s.profile_id
           AND v.trade_id = s.trade_id AND v.slice_no = s.slice_no
         ORDER BY v.id DESC LIMIT 1), false);
$$;

-- Why a newer cycle's decision supersedes decision p_decision_id about fill f and slice s (NULL:
-- it does not).
CREATE OR REPLACE FUNCTION recon._backfill_superseded(
    p_account text, f recon.exchange_fills, s public.trade_history, p_decision_id bigint)
RETURNS text
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_decided recon.backfill_decisions%ROWTYPE;
    v_newest text;
    d recon.backfill_decisions%ROWTYPE;
BEGIN
    SELECT * INTO v_decided FROM recon.backfill_decisions WHERE id = p_decision_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The account's newest succeeded cycle whose heartbeat ran (so its backfill ran before it).
    SELECT cy.cycle_id INTO v_newest FROM recon.cycles cy
     WHERE cy.exchange_account = p_account AND cy.status = 'succeeded'
       AND EXISTS (SELECT 1 FROM recon.parity_checks pc
                   WHERE pc.cycle_id = cy.cycle_id AND pc.exchange_account = p_account)
     ORDER BY cy.started_at DESC NULLS LAST, cy.finished_at DESC LIMIT 1;
    IF v_newest IS NULL OR v_newest = v_decided.cycle_id
       OR NOT EXISTS (SELECT 1 FROM recon.cycles a, recon.cycles b
                      WHERE a.cycle_id = v_newest AND a.exchange_account = p_account
                        AND b.cycle_id = v_decided.cycle_id AND b.exchange_account = p_account
                        AND a.started_at > b.started_at) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO d FROM recon.backfill_decisions
     WHERE cycle_id = v_newest AND exchange_account = p_account AND symbol = f.symbol
       AND exchange_fill_id = f.exchange_fill_id
     ORDER BY id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN pg_catalog.format('superseded: the newer cycle %s has no backfill candidate for fill %s',
                                 v_newest, f.exchange_fill_id);
    END IF;
    IF d.profile_id IS DISTINCT FROM s.profile_id OR d.trade_id IS DISTINCT FROM s.trade_id
       OR d.slice_no IS DISTINCT FROM s.slice_no OR NOT d.assignable
       OR (d.decision <> 'GO' AND NOT recon._backfill_approved(p_account, f, s)) THEN
        RETURN pg_catalog.format('superseded: the newer cycle %s decided %s for fill %s (%s)',
                                 v_newest, d.decision, f.exchange_fill_id, d.reason);
    END IF;
    RETURN NULL;
END;
$$;

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
    v_superseded text;
    d recon.backfill_decisions%ROWTYPE;
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
    -- Evidence, not the caller: only a recorded decision about this very fill and slice is
    -- booked (r.decision_id: GO, or an operator approved the pair after it); invented
    -- arguments are refused.
    IF r->>'decision_id' IS NOT NULL THEN
        SELECT * INTO d FROM recon.backfill_decisions WHERE id = (r->>'decision_id')::bigint;
    END IF;
    IF d.id IS NULL OR d.exchange_account <> v_account OR d.symbol <> f.symbol
       OR d.exchange_fill_id <> f.exchange_fill_id OR d.profile_id IS DISTINCT FROM p_profile_id
       OR d.trade_id IS DISTINCT FROM s.trade_id OR d.slice_no IS DISTINCT FROM s.slice_no
       OR NOT d.assignable
       OR (d.decision <> 'GO' AND NOT recon._backfill_approved(v_account, f, s)) THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'no_recorded_decision',
            MESSAGE = pg_catalog.format(
                '%s: no recorded backfill decision %s is a GO (or an approved pair) of fill %s on %s for slice %s of trade %s of %s: only a recorded decision is booked',
                h, COALESCE(r->>'decision_id', '(none given)'), f.exchange_fill_id, f.symbol,
                s.slice_no, s.trade_id, p_profile_id);
    END IF;
    IF s.status <> 'open' OR s.virtual_open_qty <= 0 THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'unchanged', 'trade_id', s.trade_id,
            'reason', 'the slice is no longer open', 'slice', pg_catalog.to_jsonb(s));
    END IF;
    IF r->>'decision_id' IS NOT NULL THEN
        v_superseded := recon._backfill_superseded(v_account, f, s, (r->>'decision_id')::bigint);
        IF v_superseded IS NOT NULL THEN
            RETURN pg_catalog.jsonb_build_object(
                'status', 'unchanged', 'trade_id', s.trade_id, 'slice_no', s.slice_no,
                'reason', v_superseded);
        END IF;
    END IF;
    IF f.symbol <> s.symbol OR (s.side = 'long' AND f.side <> 'sell')
       OR (s.side = 'short' AND f.side <> 'buy') OR f.qty > s.virtual_open_qty
       OR f.position_side IN ('long', 'short') AND f.position_side <> s.side THEN
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
-- p_decision_id: the backfill decision it books (recon.backfill_decisions.id), required: a
-- newer cycle's decision about the fill supersedes it unless it still names this pair.
DROP FUNCTION IF EXISTS public.recon_exit_backfill(text, text, text, text, integer, text, text,
                                                   boolean, jsonb);

CREATE OR REPLACE FUNCTION public.recon_exit_backfill(
    p_profile_id text,
    p_cycle_id text,
    p_idempotency_key text,
    p_trade_id text,
    p_slice_no integer,
    p_symbol text,
    p_exchange_fill_id text,
    p_dry_run boolean DEFAULT false,
    p_evidence jsonb DEFAULT '{}'::jsonb,
    p_decision_id bigint DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT recon._run_correction(
        'exit_backfill', p_profile_id, p_cycle_id, p_idempotency_key, NULL, p_dry_run,
        p_evidence,
        pg_catalog.jsonb_build_object('trade_id', p_trade_id, 'slice_no', p_slice_no,
                                      'symbol', p_symbol, 'exchange_fill_id', p_exchange_fill_id,
                                      'decision_id', p_decision_id));
$$;
