-- The runbook's lifecycle-safe handlers (reconcileEntryFill, reconcileExitFill, reconcileCancel)
-- as SQL functions, so the psycopg path (`SELECT ...`) and the supabase-py path (`rpc()`) apply a
-- correction through exactly the same code:
--
--   public.recon_reconcile_entry_fill(...)   reconcileEntryFill
--   public.recon_reconcile_exit_fill(...)    reconcileExitFill
--   public.recon_reconcile_cancel(...)       reconcileCancel
--   public.recon_recalculate_capital(p_profile_id)       capital ledger, after each correction
--   public.recon_begin_reconciling / recon_end_reconciling  trading_state while correcting
--   public.recon_profile_lock_key(p_profile_id)          the reconciliation lock's key
--
-- Every handler runs in the caller's transaction (one rpc() = one transaction; with psycopg call
-- it in autocommit or its own transaction) and, in order:
--   1. takes the profile's reconciliation lock: pg_advisory_xact_lock(recon_profile_lock_key(p)).
--      Transaction-scoped, so it works behind Supabase's transaction pooler, is released by
--      COMMIT/ROLLBACK and by the death of the connection. Concurrent handlers for one profile
--      queue on it; handlers of different profiles do not wait for each other. A caller that
--      must not wait forever sets lock_timeout or statement_timeout (the wait is then an error,
--      which the caller records as lock contention).
--   2. looks the idempotency key up in recon.corrections: present -> returns
--      {"status": "already_applied", ...} and changes nothing.
--   3. validates and applies the correction (orders, trade_history, positions, applied_fills,
--      then recon_recalculate_capital). An illegal transition raises an exception naming the
--      order, and the whole transaction (so the whole correction) is rolled back.
--   4. inserts the recon.corrections row (idempotency key UNIQUE, ON CONFLICT DO NOTHING) with
--      the evidence: {"input": p_evidence, "request": <arguments>, "change": <before/after>}.
--      If nothing is inserted (only possible for a writer that bypassed the lock), the applied
--      changes are rolled back to a savepoint and "already_applied" is returned.
-- and returns JSON: {"status": "applied" | "already_applied" | "dry_run" | "unchanged",
-- "handler", "idempotency_key", "correction_id", "profile_id", "trade_id", "client_order_id",
-- "order": {"before", "after"}, "slice": {...}, "position": {...}, "fills": {...},
-- "capital": {...}}. "unchanged" means the database already agrees with the evidence (e.g. a
-- fill booked under another key): nothing is changed and no correction row is written.
--
-- Dry run (p_dry_run = true): the correction is computed by the very same code, inside a
-- savepoint that is then rolled back, and only the record is kept: a recon.corrections row with
-- dry_run = true, key `<p_idempotency_key>:dry-run`, and the would-be change in its evidence.
-- The suffix keeps dry runs out of the real key space: a later real run with the same key still
-- applies (its key is free), a repeated dry run returns already_applied, and a dry run after the
-- real correction returns already_applied (the real key is looked up first). Keys ending in
-- ':dry-run' are therefore refused as input.
--
-- Fill arguments carry the exchange's cumulative view of the order (what ccxt's fetch_order
-- gives): p_filled_qty = total filled, p_avg_fill_price = average price of that total, p_fills =
-- ALL fills of the order as a JSON array [{"id", "qty", "price", "fee_usd"?, "filled_at"?}].
-- The handler books delta = p_filled_qty - orders.filled_qty (at the price that makes the
-- order's average come out right), so the same evidence under another key books nothing twice
-- ("unchanged"), and applied_fills (UNIQUE per account, symbol, fill id) books every fill once.
-- Fills, when given, must add up to p_filled_qty.
--
-- Functions are SECURITY INVOKER with an empty search_path: every name below is qualified.

CREATE SCHEMA IF NOT EXISTS recon;

-- While a profile is being corrected: which cycle (Dagster run) set trading_state = 'reconciling'
-- and since when, so a profile stranded by a crash is visible and the next run takes it over.
CREATE TABLE IF NOT EXISTS recon.reconciling (
    profile_id  text PRIMARY KEY REFERENCES public.profiles (id),
    cycle_id    text,
    started_at  timestamptz NOT NULL DEFAULT now()
);

-- The reconciliation lock's key for a profile:
--   the first 8 bytes of sha256(utf8('recon:profile:' || profile_id)), big-endian, as a signed
--   bigint (two's complement).
-- sha256 rather than hashtextextended(): the value is documented, stable across PostgreSQL
-- versions and computable anywhere; recon_assets.core.corrections.profile_lock_key is the same
-- derivation in Python (tests check they agree). In pg_locks the lock shows as
-- locktype = 'advisory', classid = key >> 32, objid = key & 0xffffffff, objsubid = 1.
CREATE OR REPLACE FUNCTION public.recon_profile_lock_key(p_profile_id text)
RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT ('x' || pg_catalog.encode(
                pg_catalog.substr(
                    pg_catalog.sha256(pg_catalog.convert_to('recon:profile:' || p_profile_id, 'UTF8')),
                    1, 8),
                'hex'))::bit(64)::bigint
$$;

CREATE OR REPLACE FUNCTION recon._lock_profile(p_profile_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF p_profile_id IS NULL OR p_profile_id = '' THEN
        RAISE EXCEPTION 'recon: a profile id is required to take the reconciliation lock';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(public.recon_profile_lock_key(p_profile_id));
END;
$$;

-- Capital ledger: reserved_usd = sum over the trade's open slices of virtual_open_qty x
-- entry_price, one row per open trade of the profile; rows of trades without an open slice are
-- removed. Takes the profile's lock (re-entrant inside a handler's transaction).
CREATE OR REPLACE FUNCTION public.recon_recalculate_capital(p_profile_id text)
RETURNS jsonb
LANGUAGE plpgsql
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

-- The order a handler corrects, locked FOR UPDATE, or a clear exception.
CREATE OR REPLACE FUNCTION recon._lock_order(
    p_handler text, p_profile_id text, p_client_order_id text, p_intent text,
    p_exchange_order_id text)
RETURNS public.orders
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    o public.orders%ROWTYPE;
BEGIN
    IF p_client_order_id IS NULL OR p_client_order_id = '' THEN
        RAISE EXCEPTION '%: a client_order_id is required', p_handler;
    END IF;
    SELECT * INTO o FROM public.orders WHERE client_order_id = p_client_order_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: unknown order %: no order with this client_order_id in the database (profile %)',
            p_handler, p_client_order_id, p_profile_id
            USING HINT = 'an exchange order missing in the database is flagged for the operator, '
                         'never adopted by a lifecycle handler';
    END IF;
    IF o.profile_id <> p_profile_id THEN
        RAISE EXCEPTION '%: order % belongs to profile %, not to profile %',
            p_handler, p_client_order_id, o.profile_id, p_profile_id;
    END IF;
    IF p_intent IS NOT NULL AND o.intent <> p_intent THEN
        RAISE EXCEPTION '%: order % (trade %) is an % order; this handler corrects % orders',
            p_handler, p_client_order_id, o.trade_id, o.intent, p_intent;
    END IF;
    IF p_exchange_order_id IS NOT NULL AND o.exchange_order_id IS NOT NULL
       AND o.exchange_order_id <> p_exchange_order_id THEN
        RAISE EXCEPTION '%: order % has exchange order id % in the database, the evidence says %',
            p_handler, p_client_order_id, o.exchange_order_id, p_exchange_order_id;
    END IF;
    RETURN o;
END;
$$;

-- Book the exchange's cumulative fill state on an order. Returns {"status": "unchanged"} when
-- the database already agrees, else {"status": "changed", "delta", "delta_price",
-- "order": {"before", "after"}}.
CREATE OR REPLACE FUNCTION recon._book_order_fill(p_handler text, o public.orders, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_filled numeric := (r->>'filled_qty')::numeric;
    v_avg numeric := (r->>'avg_fill_price')::numeric;
    v_final text := r->>'final_status';
    v_delta numeric;
    v_price numeric;
    v_status text;
    a public.orders%ROWTYPE;
BEGIN
    IF v_filled IS NULL OR v_filled <= 0 THEN
        RAISE EXCEPTION '%: order % needs a filled qty > 0 (got %); an order that filled nothing is corrected by recon_reconcile_cancel',
            p_handler, o.client_order_id, COALESCE(v_filled::text, 'none');
    END IF;
    IF v_avg IS NULL OR v_avg <= 0 THEN
        RAISE EXCEPTION '%: order % needs an average fill price > 0 (got %)',
            p_handler, o.client_order_id, COALESCE(v_avg::text, 'none');
    END IF;
    IF v_final IS NOT NULL AND v_final NOT IN ('canceled', 'expired') THEN
        RAISE EXCEPTION '%: order %: final status must be canceled or expired (or none), not %',
            p_handler, o.client_order_id, v_final;
    END IF;
    IF v_filled > o.qty THEN
        RAISE EXCEPTION '%: the exchange reports % filled for order %, more than its qty %',
            p_handler, v_filled, o.client_order_id, o.qty;
    END IF;
    IF v_filled < o.filled_qty THEN
        RAISE EXCEPTION '%: the exchange reports % filled for order %, less than the % the database booked; an operator must look at it',
            p_handler, v_filled, o.client_order_id, o.filled_qty;
    END IF;
    v_status := CASE WHEN v_filled = o.qty THEN 'filled'
                     WHEN v_final IS NOT NULL THEN v_final
                     ELSE 'partially_filled' END;
    v_delta := v_filled - o.filled_qty;
    IF v_delta = 0 AND v_status = o.status THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'unchanged',
            'reason', 'the database already books this fill state for the order',
            'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o)));
    END IF;
    IF o.status NOT IN ('new', 'open', 'partially_filled') THEN
        RAISE EXCEPTION '%: illegal transition for order % (trade %): it is % in the database; the exchange reports % filled (%)',
            p_handler, o.client_order_id, o.trade_id, o.status, v_filled, v_status;
    END IF;
    v_price := CASE WHEN v_delta = 0 THEN NULL
                    WHEN o.filled_qty = 0 OR o.avg_fill_price IS NULL THEN v_avg
                    ELSE (v_filled * v_avg - o.filled_qty * o.avg_fill_price) / v_delta END;
    IF v_delta > 0 AND v_price <= 0 THEN
        RAISE EXCEPTION '%: order %: the exchange average % over % filled is inconsistent with the database average % over %',
            p_handler, o.client_order_id, v_avg, v_filled, o.avg_fill_price, o.filled_qty;
    END IF;
    UPDATE public.orders
       SET status = v_status,
           filled_qty = v_filled,
           avg_fill_price = CASE WHEN v_delta > 0 THEN v_avg ELSE avg_fill_price END,
           exchange_order_id = COALESCE(exchange_order_id, r->>'exchange_order_id'),
           updated_at = pg_catalog.now()
     WHERE id = o.id
    RETURNING * INTO a;
    RETURN pg_catalog.jsonb_build_object(
        'status', 'changed', 'delta', v_delta, 'delta_price', v_price,
        'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o),
                                               'after', pg_catalog.to_jsonb(a)));
END;
$$;

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

-- reconcileEntryFill: the order's fills, the trade slice's entry qty and weighted entry price
-- (a new slice when the trade has none open), the position (long for buy, short for sell).
CREATE OR REPLACE FUNCTION recon._apply_entry_fill(p_profile_id text, p_client_order_id text, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    h constant text := 'recon_reconcile_entry_fill';
    o public.orders%ROWTYPE;
    s public.trade_history%ROWTYPE;
    v_fill jsonb;
    v_side text;
    v_delta numeric;
    v_price numeric;
    v_slice_before jsonb;
    v_position jsonb;
    v_other text;
BEGIN
    o := recon._lock_order(h, p_profile_id, p_client_order_id, 'ENTRY', r->>'exchange_order_id');
    v_fill := recon._book_order_fill(h, o, r);
    IF v_fill->>'status' = 'unchanged' THEN
        RETURN v_fill || pg_catalog.jsonb_build_object('trade_id', o.trade_id);
    END IF;
    v_delta := (v_fill->>'delta')::numeric;
    v_price := (v_fill->>'delta_price')::numeric;
    v_side := CASE o.side WHEN 'buy' THEN 'long' ELSE 'short' END;
    IF v_delta > 0 THEN
        SELECT profile_id INTO v_other FROM public.trade_history
         WHERE trade_id = o.trade_id AND profile_id <> o.profile_id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION '%: order %: trade % has slices of profile %, not of profile %',
                h, o.client_order_id, o.trade_id, v_other, o.profile_id;
        END IF;
        SELECT * INTO s FROM public.trade_history
         WHERE trade_id = o.trade_id AND status = 'open'
         ORDER BY slice_no DESC LIMIT 1 FOR UPDATE;
        IF FOUND THEN
            IF s.symbol <> o.symbol OR s.side <> v_side THEN
                RAISE EXCEPTION '%: order % (% %) does not match the open slice % of trade % (% %)',
                    h, o.client_order_id, o.side, o.symbol, s.slice_no, o.trade_id, s.side, s.symbol;
            END IF;
            v_slice_before := pg_catalog.to_jsonb(s);
            UPDATE public.trade_history
               SET entry_price = (s.entry_qty * COALESCE(s.entry_price, 0) + v_delta * v_price)
                                 / (s.entry_qty + v_delta),
                   entry_qty = s.entry_qty + v_delta,
                   updated_at = pg_catalog.now()
             WHERE id = s.id
            RETURNING * INTO s;
        ELSE
            INSERT INTO public.trade_history (trade_id, slice_no, profile_id, symbol, side,
                                              entry_qty, entry_price, opened_at)
            SELECT o.trade_id, COALESCE(pg_catalog.max(t.slice_no), 0) + 1, o.profile_id,
                   o.symbol, v_side, v_delta, v_price,
                   LEAST(pg_catalog.now(),
                         COALESCE((SELECT pg_catalog.min((e->>'filled_at')::timestamptz)
                                   FROM pg_catalog.jsonb_array_elements(
                                            COALESCE(r->'fills', '[]'::jsonb)) e),
                                  pg_catalog.now()))
              FROM public.trade_history t WHERE t.trade_id = o.trade_id
            RETURNING * INTO s;
        END IF;
        v_position := recon._apply_position_delta(
            o.profile_id, o.symbol, CASE v_side WHEN 'long' THEN v_delta ELSE -v_delta END, v_price);
    END IF;
    RETURN v_fill || pg_catalog.jsonb_build_object(
        'trade_id', o.trade_id,
        'slice', CASE WHEN v_delta > 0 THEN pg_catalog.jsonb_build_object(
                     'before', v_slice_before, 'after', pg_catalog.to_jsonb(s)) END,
        'position', v_position,
        'fills', recon._book_fills(h, o, r));
END;
$$;

-- reconcileExitFill: the order's fills, the oldest open slice of the trade (exit qty, weighted
-- exit price, realised PnL; closed when its virtual open qty reaches zero), the position.
CREATE OR REPLACE FUNCTION recon._apply_exit_fill(p_profile_id text, p_client_order_id text, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    h constant text := 'recon_reconcile_exit_fill';
    o public.orders%ROWTYPE;
    s public.trade_history%ROWTYPE;
    v_fill jsonb;
    v_delta numeric;
    v_price numeric;
    v_pnl numeric;
    v_closes boolean;
    v_slice_before jsonb;
    v_position jsonb;
BEGIN
    o := recon._lock_order(h, p_profile_id, p_client_order_id, 'EXIT', r->>'exchange_order_id');
    v_fill := recon._book_order_fill(h, o, r);
    IF v_fill->>'status' = 'unchanged' THEN
        RETURN v_fill || pg_catalog.jsonb_build_object('trade_id', o.trade_id);
    END IF;
    v_delta := (v_fill->>'delta')::numeric;
    v_price := (v_fill->>'delta_price')::numeric;
    IF v_delta > 0 THEN
        SELECT * INTO s FROM public.trade_history
         WHERE trade_id = o.trade_id AND profile_id = o.profile_id AND status = 'open'
           AND virtual_open_qty > 0
         ORDER BY slice_no LIMIT 1 FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION '%: exit order % has no open slice of trade % (profile %) to exit',
                h, o.client_order_id, o.trade_id, o.profile_id;
        END IF;
        IF s.symbol <> o.symbol
           OR (s.side = 'long' AND o.side <> 'sell') OR (s.side = 'short' AND o.side <> 'buy') THEN
            RAISE EXCEPTION '%: exit order % (% %) cannot exit slice % of trade % (% %)',
                h, o.client_order_id, o.side, o.symbol, s.slice_no, o.trade_id, s.side, s.symbol;
        END IF;
        IF v_delta > s.virtual_open_qty THEN
            RAISE EXCEPTION '%: exit fill of % on order % exceeds the open qty % of trade % slice % (entry %, exit %)',
                h, v_delta, o.client_order_id, s.virtual_open_qty, o.trade_id, s.slice_no,
                s.entry_qty, s.exit_qty;
        END IF;
        IF s.entry_price IS NULL THEN
            RAISE EXCEPTION '%: exit order %: slice % of trade % has no entry price, so no PnL can be booked',
                h, o.client_order_id, s.slice_no, o.trade_id;
        END IF;
        v_pnl := CASE s.side WHEN 'long' THEN v_price - s.entry_price
                             ELSE s.entry_price - v_price END * v_delta;
        v_closes := s.exit_qty + v_delta = s.entry_qty;
        v_slice_before := pg_catalog.to_jsonb(s);
        UPDATE public.trade_history
           SET exit_price = (s.exit_qty * COALESCE(s.exit_price, 0) + v_delta * v_price)
                            / (s.exit_qty + v_delta),
               exit_qty = s.exit_qty + v_delta,
               realised_pnl_usd = s.realised_pnl_usd + v_pnl,
               status = CASE WHEN v_closes THEN 'closed' ELSE 'open' END,
               closed_at = CASE WHEN v_closes THEN pg_catalog.now() END,
               close_reason = CASE WHEN v_closes
                                   THEN COALESCE(r->>'close_reason', 'reconciled_exit_fill')
                                   ELSE s.close_reason END,
               updated_at = pg_catalog.now()
         WHERE id = s.id
        RETURNING * INTO s;
        v_position := recon._apply_position_delta(
            o.profile_id, o.symbol, CASE s.side WHEN 'long' THEN -v_delta ELSE v_delta END, v_price);
    END IF;
    RETURN v_fill || pg_catalog.jsonb_build_object(
        'trade_id', o.trade_id,
        'slice', CASE WHEN v_delta > 0 THEN pg_catalog.jsonb_build_object(
                     'before', v_slice_before, 'after', pg_catalog.to_jsonb(s)) END,
        'position', v_position,
        'realised_pnl_usd', v_pnl,
        'fills', recon._book_fills(h, o, r));
END;
$$;

-- reconcileCancel: the order's status only (canceled, or expired/rejected as the exchange says);
-- never from filled. An order the exchange filled more of than the database booked needs a fill
-- handler first (p_filled_qty, when given, is checked).
CREATE OR REPLACE FUNCTION recon._apply_cancel(p_profile_id text, p_client_order_id text, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    h constant text := 'recon_reconcile_cancel';
    o public.orders%ROWTYPE;
    a public.orders%ROWTYPE;
    v_final text := COALESCE(r->>'final_status', 'canceled');
    v_filled numeric := (r->>'filled_qty')::numeric;
BEGIN
    IF v_final NOT IN ('canceled', 'expired', 'rejected') THEN
        RAISE EXCEPTION '%: order %: final status must be canceled, expired or rejected, not %',
            h, p_client_order_id, v_final;
    END IF;
    o := recon._lock_order(h, p_profile_id, p_client_order_id, NULL, r->>'exchange_order_id');
    IF o.status = v_final THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'unchanged', 'trade_id', o.trade_id,
            'reason', 'the order is already ' || v_final || ' in the database',
            'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o)));
    END IF;
    IF o.status NOT IN ('new', 'open', 'partially_filled') THEN
        RAISE EXCEPTION '%: illegal transition: cannot mark order % (trade %) % because it is % in the database',
            h, o.client_order_id, o.trade_id, v_final, o.status;
    END IF;
    IF v_filled IS NOT NULL AND v_filled <> o.filled_qty THEN
        RAISE EXCEPTION '%: order %: the exchange reports % filled but the database booked %; book the fill (recon_reconcile_%_fill) before cancelling',
            h, o.client_order_id, v_filled, o.filled_qty, pg_catalog.lower(o.intent);
    END IF;
    IF v_final = 'rejected' AND o.filled_qty > 0 THEN
        RAISE EXCEPTION '%: order % has % filled, so it cannot be rejected', h, o.client_order_id, o.filled_qty;
    END IF;
    UPDATE public.orders
       SET status = v_final,
           exchange_order_id = COALESCE(exchange_order_id, r->>'exchange_order_id'),
           updated_at = pg_catalog.now()
     WHERE id = o.id
    RETURNING * INTO a;
    RETURN pg_catalog.jsonb_build_object(
        'status', 'changed', 'trade_id', o.trade_id,
        'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o),
                                               'after', pg_catalog.to_jsonb(a)));
END;
$$;

CREATE OR REPLACE FUNCTION recon._already_applied(c recon.corrections, p_handler text, p_profile_id text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF c.handler <> p_handler OR c.profile_id <> p_profile_id THEN
        RAISE EXCEPTION 'idempotency key % was already used by % for profile %, not by % for profile %',
            c.idempotency_key, c.handler, c.profile_id, p_handler, p_profile_id;
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'status', 'already_applied', 'handler', c.handler, 'idempotency_key', c.idempotency_key,
        'correction_id', c.id, 'cycle_id', c.cycle_id, 'dry_run', c.dry_run,
        'applied_at', c.applied_at, 'profile_id', c.profile_id, 'trade_id', c.trade_id,
        'client_order_id', c.client_order_id);
END;
$$;

-- The common frame of the three handlers: lock, idempotency, dry run, record. See the top.
CREATE OR REPLACE FUNCTION recon._run_correction(
    p_handler text, p_profile_id text, p_cycle_id text, p_idempotency_key text,
    p_client_order_id text, p_dry_run boolean, p_evidence jsonb, p_request jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_key text;
    v_existing recon.corrections%ROWTYPE;
    v_change jsonb;
    v_id bigint;
    v_detail text;
BEGIN
    IF p_profile_id IS NULL OR p_profile_id = '' THEN
        RAISE EXCEPTION 'recon_%: p_profile_id is required', p_handler;
    END IF;
    IF p_cycle_id IS NULL OR p_cycle_id = '' THEN
        RAISE EXCEPTION 'recon_%: p_cycle_id (the Dagster run id) is required', p_handler;
    END IF;
    IF p_idempotency_key IS NULL OR p_idempotency_key = '' THEN
        RAISE EXCEPTION 'recon_%: p_idempotency_key is required', p_handler;
    END IF;
    IF p_idempotency_key LIKE '%:dry-run' THEN
        RAISE EXCEPTION 'recon_%: idempotency key % ends with the reserved suffix :dry-run',
            p_handler, p_idempotency_key;
    END IF;
    IF p_dry_run IS NULL THEN
        RAISE EXCEPTION 'recon_%: p_dry_run must be true or false', p_handler;
    END IF;

    -- 1. The reconciliation lock: one corrector per profile at a time.
    PERFORM recon._lock_profile(p_profile_id);

    -- 2. Idempotency (after the lock, so the previous holder's commit is visible).
    v_key := CASE WHEN p_dry_run THEN p_idempotency_key || ':dry-run' ELSE p_idempotency_key END;
    SELECT * INTO v_existing FROM recon.corrections
     WHERE idempotency_key = p_idempotency_key OR idempotency_key = v_key
     ORDER BY dry_run LIMIT 1;
    IF FOUND THEN
        RETURN recon._already_applied(v_existing, p_handler, p_profile_id);
    END IF;

    -- 3./4. Apply and record, in a savepoint so a dry run or a lost insert leaves nothing behind.
    BEGIN
        v_change := CASE p_handler
            WHEN 'reconcile_entry_fill' THEN recon._apply_entry_fill(p_profile_id, p_client_order_id, p_request)
            WHEN 'reconcile_exit_fill' THEN recon._apply_exit_fill(p_profile_id, p_client_order_id, p_request)
            WHEN 'reconcile_cancel' THEN recon._apply_cancel(p_profile_id, p_client_order_id, p_request)
        END;
        IF v_change IS NULL THEN
            RAISE EXCEPTION 'recon: unknown handler %', p_handler;
        END IF;
        IF v_change->>'status' = 'unchanged' THEN
            RETURN v_change || pg_catalog.jsonb_build_object(
                'handler', p_handler, 'idempotency_key', v_key, 'correction_id', NULL,
                'profile_id', p_profile_id, 'client_order_id', p_client_order_id,
                'dry_run', p_dry_run);
        END IF;
        v_change := (v_change - 'status') || pg_catalog.jsonb_build_object(
            'capital', public.recon_recalculate_capital(p_profile_id));
        IF p_dry_run THEN
            RAISE EXCEPTION USING ERRCODE = 'RCDRY', MESSAGE = 'recon dry run: roll the change back',
                                  DETAIL = v_change::text;
        END IF;
        INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id,
                                       client_order_id, dry_run, evidence)
        VALUES (v_key, p_cycle_id, p_profile_id, p_handler, v_change->>'trade_id',
                p_client_order_id, false,
                pg_catalog.jsonb_build_object('input', COALESCE(p_evidence, '{}'::jsonb),
                                              'request', p_request, 'change', v_change))
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'RCDUP', MESSAGE = 'recon: idempotency key taken';
        END IF;
    EXCEPTION
        WHEN SQLSTATE 'RCDRY' THEN
            GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
            v_change := v_detail::jsonb;
        WHEN SQLSTATE 'RCDUP' THEN
            SELECT * INTO v_existing FROM recon.corrections WHERE idempotency_key = v_key;
            RETURN recon._already_applied(v_existing, p_handler, p_profile_id);
    END;

    IF p_dry_run THEN
        INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id,
                                       client_order_id, dry_run, evidence)
        VALUES (v_key, p_cycle_id, p_profile_id, p_handler, v_change->>'trade_id',
                p_client_order_id, true,
                pg_catalog.jsonb_build_object('input', COALESCE(p_evidence, '{}'::jsonb),
                                              'request', p_request, 'change', v_change))
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NULL THEN
            SELECT * INTO v_existing FROM recon.corrections WHERE idempotency_key = v_key;
            RETURN recon._already_applied(v_existing, p_handler, p_profile_id);
        END IF;
    END IF;

    RETURN pg_catalog.jsonb_build_object(
        'status', CASE WHEN p_dry_run THEN 'dry_run' ELSE 'applied' END,
        'handler', p_handler, 'idempotency_key', v_key, 'correction_id', v_id,
        'cycle_id', p_cycle_id, 'dry_run', p_dry_run, 'profile_id', p_profile_id,
        'client_order_id', p_client_order_id) || v_change;
END;
$$;

-- reconcileEntryFill. See the top of this file for the frame and the fill arguments.
CREATE OR REPLACE FUNCTION public.recon_reconcile_entry_fill(
    p_profile_id text,
    p_cycle_id text,
    p_idempotency_key text,
    p_client_order_id text,
    p_filled_qty numeric,
    p_avg_fill_price numeric,
    p_exchange_order_id text DEFAULT NULL,
    p_fills jsonb DEFAULT '[]'::jsonb,
    p_final_status text DEFAULT NULL,
    p_dry_run boolean DEFAULT false,
    p_evidence jsonb DEFAULT '{}'::jsonb)
RETURNS jsonb
LANGUAGE sql
SET search_path = ''
AS $$
    SELECT recon._run_correction(
        'reconcile_entry_fill', p_profile_id, p_cycle_id, p_idempotency_key, p_client_order_id,
        p_dry_run, p_evidence,
        pg_catalog.jsonb_build_object(
            'exchange_order_id', p_exchange_order_id, 'filled_qty', p_filled_qty,
            'avg_fill_price', p_avg_fill_price, 'fills', COALESCE(p_fills, '[]'::jsonb),
            'final_status', p_final_status));
$$;

-- reconcileExitFill. p_close_reason is written on the slice when this fill closes it.
CREATE OR REPLACE FUNCTION public.recon_reconcile_exit_fill(
    p_profile_id text,
    p_cycle_id text,
    p_idempotency_key text,
    p_client_order_id text,
    p_filled_qty numeric,
    p_avg_fill_price numeric,
    p_exchange_order_id text DEFAULT NULL,
    p_fills jsonb DEFAULT '[]'::jsonb,
    p_final_status text DEFAULT NULL,
    p_close_reason text DEFAULT 'reconciled_exit_fill',
    p_dry_run boolean DEFAULT false,
    p_evidence jsonb DEFAULT '{}'::jsonb)
RETURNS jsonb
LANGUAGE sql
SET search_path = ''
AS $$
    SELECT recon._run_correction(
        'reconcile_exit_fill', p_profile_id, p_cycle_id, p_idempotency_key, p_client_order_id,
        p_dry_run, p_evidence,
        pg_catalog.jsonb_build_object(
            'exchange_order_id', p_exchange_order_id, 'filled_qty', p_filled_qty,
            'avg_fill_price', p_avg_fill_price, 'fills', COALESCE(p_fills, '[]'::jsonb),
            'final_status', p_final_status, 'close_reason', p_close_reason));
$$;

-- reconcileCancel. p_filled_qty (optional) is the exchange's filled qty, checked against the
-- database's; p_final_status is canceled (default), expired or rejected.
CREATE OR REPLACE FUNCTION public.recon_reconcile_cancel(
    p_profile_id text,
    p_cycle_id text,
    p_idempotency_key text,
    p_client_order_id text,
    p_exchange_order_id text DEFAULT NULL,
    p_filled_qty numeric DEFAULT NULL,
    p_final_status text DEFAULT 'canceled',
    p_dry_run boolean DEFAULT false,
    p_evidence jsonb DEFAULT '{}'::jsonb)
RETURNS jsonb
LANGUAGE sql
SET search_path = ''
AS $$
    SELECT recon._run_correction(
        'reconcile_cancel', p_profile_id, p_cycle_id, p_idempotency_key, p_client_order_id,
        p_dry_run, p_evidence,
        pg_catalog.jsonb_build_object(
            'exchange_order_id', p_exchange_order_id, 'filled_qty', p_filled_qty,
            'final_status', COALESCE(p_final_status, 'canceled')));
$$;

-- While a profile is corrected its trading_state is 'reconciling' (the trading app starts no new
-- ENTRY/EXIT flow), and 'active' again afterwards. A paused profile stays paused: begin does not
-- touch it and end only restores 'reconciling'; a pause set during reconciliation wins.
-- Crash between begin and end: the profile stays 'reconciling' with its row in
-- recon.reconciling (cycle id, started_at) for monitoring. Both functions are idempotent; the
-- next run for the profile calls begin (which takes the session over, recording its own cycle
-- id) and end (which restores 'active'). end(p, cycle) leaves a session another cycle took over
-- alone; end(p) without a cycle id restores unconditionally (operator, or a cycle that knows no
-- run of that profile is in progress: the Dagster run-tag limit allows one per profile).
CREATE OR REPLACE FUNCTION public.recon_begin_reconciling(p_profile_id text, p_cycle_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_state text;
    v_new text;
BEGIN
    PERFORM recon._lock_profile(p_profile_id);
    SELECT trading_state INTO v_state FROM public.profiles WHERE id = p_profile_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recon_begin_reconciling: unknown profile %', p_profile_id;
    END IF;
    v_new := v_state;
    IF v_state IN ('active', 'reconciling') THEN
        v_new := 'reconciling';
        IF v_state = 'active' THEN
            UPDATE public.profiles SET trading_state = 'reconciling', updated_at = pg_catalog.now()
             WHERE id = p_profile_id;
        END IF;
        INSERT INTO recon.reconciling (profile_id, cycle_id, started_at)
        VALUES (p_profile_id, p_cycle_id, pg_catalog.now())
        ON CONFLICT (profile_id) DO UPDATE
            SET cycle_id = EXCLUDED.cycle_id, started_at = EXCLUDED.started_at;
    END IF;
    RETURN pg_catalog.jsonb_build_object('profile_id', p_profile_id, 'previous_state', v_state,
                                         'trading_state', v_new, 'cycle_id', p_cycle_id,
                                         'took_over', v_state = 'reconciling');
END;
$$;

CREATE OR REPLACE FUNCTION public.recon_end_reconciling(p_profile_id text, p_cycle_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_state text;
    v_owner text;
    v_has_session boolean;
BEGIN
    PERFORM recon._lock_profile(p_profile_id);
    SELECT trading_state INTO v_state FROM public.profiles WHERE id = p_profile_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recon_end_reconciling: unknown profile %', p_profile_id;
    END IF;
    SELECT cycle_id, true INTO v_owner, v_has_session
      FROM recon.reconciling WHERE profile_id = p_profile_id FOR UPDATE;
    IF p_cycle_id IS NOT NULL AND v_has_session AND v_owner IS DISTINCT FROM p_cycle_id THEN
        RETURN pg_catalog.jsonb_build_object(
            'profile_id', p_profile_id, 'trading_state', v_state, 'restored', false,
            'reason', 'the session was taken over by cycle ' || COALESCE(v_owner, '(none)'));
    END IF;
    DELETE FROM recon.reconciling WHERE profile_id = p_profile_id;
    IF v_state = 'reconciling' THEN
        UPDATE public.profiles SET trading_state = 'active', updated_at = pg_catalog.now()
         WHERE id = p_profile_id;
        RETURN pg_catalog.jsonb_build_object('profile_id', p_profile_id, 'trading_state', 'active',
                                             'restored', true);
    END IF;
    RETURN pg_catalog.jsonb_build_object('profile_id', p_profile_id, 'trading_state', v_state,
                                         'restored', false);
END;
$$;

-- Who may call what. The handlers change money state, so PUBLIC may not call them (on Supabase
-- neither may anon / authenticated, to whom the default privileges of schema public would
-- otherwise give EXECUTE through the Data API). The owner (the role that migrates) keeps
-- EXECUTE. Where Supabase's service_role exists (the role supabase-py's rpc() runs as with the
-- service key), it gets EXECUTE and what the functions touch in schema recon: they are
-- SECURITY INVOKER, so they run with the caller's privileges.
DO $grants$
DECLARE
    fn text;
    r text;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.proname IN ('recon_reconcile_entry_fill', 'recon_reconcile_exit_fill',
                             'recon_reconcile_cancel', 'recon_recalculate_capital',
                             'recon_begin_reconciling', 'recon_end_reconciling')
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
                EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %I', fn, r);
            END IF;
        END LOOP;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO service_role', fn);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT USAGE ON SCHEMA recon TO service_role;
        GRANT SELECT, INSERT ON recon.corrections TO service_role;
        GRANT USAGE ON SEQUENCE recon.corrections_id_seq TO service_role;
        GRANT SELECT, INSERT, UPDATE, DELETE ON recon.reconciling TO service_role;
    END IF;
END
$grants$;
