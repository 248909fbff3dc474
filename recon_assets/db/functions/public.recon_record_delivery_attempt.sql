-- One post of an alert: its outcome (p_status), the error if any, and when the next attempt is
-- due (ReconStore.record_delivery_attempt).
CREATE OR REPLACE FUNCTION public.recon_record_delivery_attempt(
    p_alert_id bigint, p_status text, p_error text, p_next_attempt_at timestamptz)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    UPDATE recon.alerts
    SET attempts = attempts + 1, last_attempt_at = now(), delivery_status = p_status,
        next_attempt_at = p_next_attempt_at, delivery_error = p_error,
        delivered_at = CASE WHEN p_status = 'delivered' THEN now() END
    WHERE id = p_alert_id;
$$;
