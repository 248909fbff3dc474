-- The parity checks of one profile in one cycle with decision p_decision, numbers as exact text
-- (ReconStore.parity_decisions, for the synthetic exits). `run_id`: the attempt of the cycle that
-- recorded it.
-- Its result gained run_id: the older definition is dropped once (a repeated drop would take
-- the reconciler role's grant with it every time the functions are applied).
DO $drop$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc
                    WHERE oid = pg_catalog.to_regprocedure('public.recon_parity_decisions(text, text, text)')
                      AND 'run_id' = ANY (proargnames)) THEN
        DROP FUNCTION IF EXISTS public.recon_parity_decisions(text, text, text);
    END IF;
END
$drop$;

CREATE OR REPLACE FUNCTION public.recon_parity_decisions(
    p_cycle_id text, p_profile_id text, p_decision text)
RETURNS TABLE (check_id bigint, cycle_id text, exchange_account text, profile_id text,
               trade_id text, slice_no integer, symbol text, side text, qty text, price text,
               price_source text, streak integer, streak_started_cycle text,
               idempotency_key text, reason text, checked_at timestamptz, run_id text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT c.id, c.cycle_id, c.exchange_account, c.profile_id, c.trade_id, c.slice_no,
           c.symbol, c.side, c.virtual_open_qty::text, c.mark_price::text, c.price_source,
           c.streak, c.streak_started_cycle, c.idempotency_key, c.reason, c.checked_at,
           c.run_id
    FROM recon.parity_checks c
    WHERE c.cycle_id = p_cycle_id AND c.profile_id = p_profile_id AND c.decision = p_decision
    ORDER BY c.trade_id, c.slice_no;
$$;
