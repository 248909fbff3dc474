-- How many of the profile's latest corrections by the handlers p_handlers (a JSON array of text:
-- the lifecycle handlers) in a row were refused or failed (no dry run; counted back from the
-- newest to its latest applied one), when the newest of them
-- was recorded, and the database's clock (ReconStore.refusal_streak: the correction sensor backs
-- off such a profile, core/corrections.py `retry_after_refusals`).
CREATE OR REPLACE FUNCTION public.recon_refusal_streak(p_profile_id text, p_handlers jsonb)
RETURNS TABLE (refusals integer, last_refused_at timestamptz, now timestamptz)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    WITH recent AS (
        SELECT c.outcome, c.applied_at FROM recon.corrections c
         WHERE c.profile_id = p_profile_id AND NOT c.dry_run
           AND c.handler IN (SELECT pg_catalog.jsonb_array_elements_text(p_handlers))
         ORDER BY c.applied_at DESC, c.id DESC
         LIMIT 64),
    last_applied AS (SELECT max(applied_at) AS at FROM recent WHERE outcome = 'applied')
    SELECT count(*)::integer, max(r.applied_at), pg_catalog.now()
      FROM recent r, last_applied a
     WHERE r.outcome IN ('refused', 'failed') AND (a.at IS NULL OR r.applied_at > a.at);
$$;
