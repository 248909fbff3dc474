-- Pending alerts whose next attempt is due now (the database's clock), oldest first; or, with
-- p_alert_ids (a JSON array of ids), those of them that are pending. Each row carries the
-- database's now (ReconStore.alerts_to_deliver).
CREATE OR REPLACE FUNCTION public.recon_alerts_to_deliver(p_alert_ids jsonb DEFAULT NULL)
RETURNS TABLE (id bigint, dedup_key text, reason text, exchange_account text, profile_id text,
               summary text, details jsonb, attempts integer, now timestamptz)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT a.id, a.dedup_key, a.reason, a.exchange_account, a.profile_id, a.summary, a.details,
           a.attempts, now()
    FROM recon.alerts a
    WHERE a.delivery_status = 'pending'
      AND (CASE WHEN p_alert_ids IS NULL OR jsonb_typeof(p_alert_ids) = 'null'
                THEN a.next_attempt_at IS NULL OR a.next_attempt_at <= now()
                ELSE a.id IN (SELECT jsonb_array_elements_text(p_alert_ids)::bigint) END)
    ORDER BY a.id;
$$;
