-- Records what holds a profile's auto-resume back and since when it could happen, with its
-- clean-cycle streak, in recon.watchdog_state (one row per profile, upserted). The outlook
-- arguments are null when the profile is not paused. p_held_back_by is a JSON array of text
-- (stored as text[]), p_conditions the JSON of the conditions. Returns nothing
-- (WatchdogStore.record_resume_outlook).
CREATE OR REPLACE FUNCTION public.recon_record_resume_outlook(
    p_profile_id text, p_account text, p_clean_cycles integer, p_held_back_by jsonb,
    p_conditions jsonb, p_earliest_at timestamptz, p_clean_cycles_needed integer)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    INSERT INTO recon.watchdog_state AS w
        (profile_id, exchange_account, clean_cycles, resume_held_back_by, resume_conditions,
         resume_earliest_at, resume_clean_cycles_needed, resume_checked_at, updated_at)
    VALUES (p_profile_id, p_account, p_clean_cycles,
            CASE WHEN NULLIF(p_held_back_by, 'null'::jsonb) IS NOT NULL THEN
                ARRAY(SELECT e.value FROM jsonb_array_elements_text(p_held_back_by)
                                          WITH ORDINALITY AS e(value, n) ORDER BY e.n)
            END,
            NULLIF(p_conditions, 'null'::jsonb), p_earliest_at, p_clean_cycles_needed,
            now(), now())
    ON CONFLICT (profile_id) DO UPDATE
       SET clean_cycles = EXCLUDED.clean_cycles,
           resume_held_back_by = EXCLUDED.resume_held_back_by,
           resume_conditions = EXCLUDED.resume_conditions,
           resume_earliest_at = EXCLUDED.resume_earliest_at,
           resume_clean_cycles_needed = EXCLUDED.resume_clean_cycles_needed,
           resume_checked_at = EXCLUDED.resume_checked_at,
           updated_at = EXCLUDED.updated_at;
$$;
