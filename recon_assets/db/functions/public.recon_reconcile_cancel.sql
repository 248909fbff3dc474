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
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT recon._run_correction(
        'reconcile_cancel', p_profile_id, p_cycle_id, p_idempotency_key, p_client_order_id,
        p_dry_run, p_evidence,
        pg_catalog.jsonb_build_object(
            'exchange_order_id', p_exchange_order_id, 'filled_qty', p_filled_qty,
            'final_status', COALESCE(p_final_status, 'canceled')));
$$;
