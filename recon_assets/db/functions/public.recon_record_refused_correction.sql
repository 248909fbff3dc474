-- A correction that was not applied because a check refused it or an error stopped it: one row
-- in recon.corrections with outcome 'refused' or 'failed', the reason code, the handler it was
-- meant for and the evidence (the would-be idempotency key among it), but no idempotency key,
-- so the right correction still applies once the cause is fixed. The escalation sensor raises
-- one alert per row. Returns the row's id.
CREATE OR REPLACE FUNCTION public.recon_record_refused_correction(
    p_cycle_id text,
    p_profile_id text,
    p_handler text,
    p_outcome text,
    p_reason text,
    p_trade_id text DEFAULT NULL,
    p_client_order_id text DEFAULT NULL,
    p_dry_run boolean DEFAULT false,
    p_evidence jsonb DEFAULT '{}'::jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_outcome IS NULL OR p_outcome NOT IN ('refused', 'failed') THEN
        RAISE EXCEPTION 'recon_record_refused_correction: outcome must be refused or failed, not %',
            COALESCE(p_outcome, 'none');
    END IF;
    IF COALESCE(p_reason, '') = '' THEN
        RAISE EXCEPTION 'recon_record_refused_correction: a reason is required';
    END IF;
    INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id,
                                   client_order_id, dry_run, evidence, outcome, reason)
    VALUES (NULL, p_cycle_id, p_profile_id, p_handler, p_trade_id, p_client_order_id,
            COALESCE(p_dry_run, false), COALESCE(p_evidence, '{}'::jsonb), p_outcome, p_reason)
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;
