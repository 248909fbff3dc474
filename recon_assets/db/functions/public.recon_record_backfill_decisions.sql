-- The EXIT backfill's decisions of one cycle of one account (core/backfill.py), appended to
-- recon.backfill_decisions in one transaction; a retried step records nothing twice (the
-- decisions keep the run, p_run_id, of the attempt that recorded them: an apply job acts only
-- on its cycle's newest attempt's).
-- Returns {"recorded": n, "go": n, "no_go": n, "already_recorded": bool, "run_id": the
-- attempt that recorded them}.
DROP FUNCTION IF EXISTS public.recon_record_backfill_decisions(text, text, jsonb, boolean);

CREATE OR REPLACE FUNCTION public.recon_record_backfill_decisions(
    p_cycle_id text, p_account text, p_decisions jsonb, p_dry_run boolean DEFAULT false,
    p_run_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_recorded integer;
BEGIN
    IF EXISTS (SELECT 1 FROM recon.backfill_decisions
               WHERE cycle_id = p_cycle_id AND exchange_account = p_account) THEN
        RETURN pg_catalog.jsonb_build_object(
            'recorded', 0, 'go', 0, 'no_go', 0, 'already_recorded', true,
            'run_id', (SELECT d.run_id FROM recon.backfill_decisions d
                        WHERE d.cycle_id = p_cycle_id AND d.exchange_account = p_account
                        ORDER BY d.id LIMIT 1));
    END IF;
    INSERT INTO recon.backfill_decisions (
        cycle_id, exchange_account, symbol, exchange_fill_id, exchange_order_id, client_order_id,
        fill_side, fill_qty, fill_price, fee_usd, filled_at, profile_id, trade_id, slice_no,
        slice_side, slice_open_qty, slice_opened_at, candidate_slices, match_mode, strong,
        assignable, decision, reason, idempotency_key, dry_run, run_id)
    SELECT p_cycle_id, p_account, d.symbol, d.exchange_fill_id, d.exchange_order_id,
           d.client_order_id, d.fill_side, d.fill_qty, d.fill_price, d.fee_usd, d.filled_at,
           d.profile_id, d.trade_id, d.slice_no, d.slice_side, d.slice_open_qty,
           d.slice_opened_at, COALESCE(d.candidate_slices, '[]'::jsonb), d.match_mode,
           COALESCE(d.strong, false), COALESCE(d.assignable, false), d.decision, d.reason, d.idempotency_key,
           COALESCE(p_dry_run, false), p_run_id
      FROM pg_catalog.jsonb_to_recordset(COALESCE(p_decisions, '[]'::jsonb)) AS d(
           symbol text, exchange_fill_id text, exchange_order_id text, client_order_id text,
           fill_side text, fill_qty numeric, fill_price numeric, fee_usd numeric,
           filled_at timestamptz, profile_id text, trade_id text, slice_no integer,
           slice_side text, slice_open_qty numeric, slice_opened_at timestamptz,
           candidate_slices jsonb, match_mode text, strong boolean, assignable boolean, decision text, reason text,
           idempotency_key text);
    GET DIAGNOSTICS v_recorded = ROW_COUNT;
    RETURN pg_catalog.jsonb_build_object(
        'recorded', v_recorded,
        'go', (SELECT pg_catalog.count(*) FROM recon.backfill_decisions
                WHERE cycle_id = p_cycle_id AND exchange_account = p_account AND decision = 'GO'),
        'no_go', (SELECT pg_catalog.count(*) FROM recon.backfill_decisions
                   WHERE cycle_id = p_cycle_id AND exchange_account = p_account
                     AND decision = 'NO_GO'),
        'already_recorded', false, 'run_id', p_run_id);
END;
$$;
