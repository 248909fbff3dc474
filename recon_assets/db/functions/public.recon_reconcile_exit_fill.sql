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
SECURITY DEFINER
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
