-- EXIT backfill decisions, numbers as exact text, filtered by whichever arguments are given
-- (NULL: any), in the order they were made. One query for BackfillStore's three reads:
-- `decision` (by id), `decisions` (a profile's decisions of one cycle with one verdict) and
-- `pair_in_cycle` (a cycle's decision about one fill and slice, for approve_backfill). `run_id`:
-- the attempt of the cycle that recorded it.
-- Its result gained run_id: the older definition is dropped once (a repeated drop would take
-- the reconciler role's grant with it every time the functions are applied).
DO $drop$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc
                    WHERE oid = pg_catalog.to_regprocedure('public.recon_backfill_decisions(bigint, text, text, text, text, text, text, integer, text)')
                      AND 'run_id' = ANY (proargnames)) THEN
        DROP FUNCTION IF EXISTS public.recon_backfill_decisions(bigint, text, text, text, text, text, text, integer, text);
    END IF;
END
$drop$;

CREATE OR REPLACE FUNCTION public.recon_backfill_decisions(
    p_decision_id bigint DEFAULT NULL, p_cycle_id text DEFAULT NULL, p_account text DEFAULT NULL,
    p_symbol text DEFAULT NULL, p_exchange_fill_id text DEFAULT NULL,
    p_profile_id text DEFAULT NULL, p_trade_id text DEFAULT NULL, p_slice_no integer DEFAULT NULL,
    p_decision text DEFAULT NULL)
RETURNS TABLE (decision_id bigint, cycle_id text, exchange_account text, symbol text,
               exchange_fill_id text, exchange_order_id text, client_order_id text,
               fill_side text, fill_qty text, fill_price text, fee_usd text,
               filled_at timestamptz, profile_id text, trade_id text, slice_no integer,
               match_mode text, strong boolean, assignable boolean, decision text, reason text,
               idempotency_key text, created_at timestamptz, run_id text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT d.id, d.cycle_id, d.exchange_account, d.symbol, d.exchange_fill_id,
           d.exchange_order_id, d.client_order_id, d.fill_side, d.fill_qty::text,
           d.fill_price::text, d.fee_usd::text, d.filled_at, d.profile_id, d.trade_id,
           d.slice_no, d.match_mode, d.strong, d.assignable, d.decision, d.reason,
           d.idempotency_key, d.created_at, d.run_id
    FROM recon.backfill_decisions d
    WHERE (p_decision_id IS NULL OR d.id = p_decision_id)
      AND (p_cycle_id IS NULL OR d.cycle_id = p_cycle_id)
      AND (p_account IS NULL OR d.exchange_account = p_account)
      AND (p_symbol IS NULL OR d.symbol = p_symbol)
      AND (p_exchange_fill_id IS NULL OR d.exchange_fill_id = p_exchange_fill_id)
      AND (p_profile_id IS NULL OR d.profile_id = p_profile_id)
      AND (p_trade_id IS NULL OR d.trade_id = p_trade_id)
      AND (p_slice_no IS NULL OR d.slice_no = p_slice_no)
      AND (p_decision IS NULL OR d.decision = p_decision)
    ORDER BY d.filled_at, d.symbol, d.exchange_fill_id;
$$;
