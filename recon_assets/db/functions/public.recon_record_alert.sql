-- Record an alert once (its dedup key), before anything is posted, with its delivery status
-- (pending, or not_configured): the new row's id, or NULL if it was already recorded
-- (ReconStore.record_alert).
CREATE OR REPLACE FUNCTION public.recon_record_alert(
    p_dedup_key text, p_reason text, p_exchange_account text, p_profile_id text,
    p_summary text, p_details jsonb, p_delivery_status text)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    INSERT INTO recon.alerts (dedup_key, reason, exchange_account, profile_id, summary, details,
                              delivery_status)
    VALUES (p_dedup_key, p_reason, p_exchange_account, p_profile_id, p_summary, p_details,
            p_delivery_status)
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING id;
$$;
