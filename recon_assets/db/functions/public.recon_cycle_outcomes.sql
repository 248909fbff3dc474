-- Per cycle id of p_cycle_ids (a JSON array of text): its recorded status and error (null when
-- recon.cycles has no row) and the profile's watchdog verdict in it (clean, tripped, findings;
-- null when not judged), for the auto-resume rule's clean-cycle history
-- (WatchdogStore.cycle_outcomes).
CREATE OR REPLACE FUNCTION public.recon_cycle_outcomes(p_cycle_ids jsonb, p_profile_id text)
RETURNS TABLE (cycle_id text, status text, error text, clean boolean, tripped boolean,
               findings integer)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT u.id, c.status, c.error, w.clean, w.tripped, w.findings
    FROM jsonb_array_elements_text(p_cycle_ids) AS u(id)
    LEFT JOIN recon.cycles c ON c.cycle_id = u.id
    LEFT JOIN recon.watchdog_checks w ON w.cycle_id = u.id AND w.profile_id = p_profile_id;
$$;
