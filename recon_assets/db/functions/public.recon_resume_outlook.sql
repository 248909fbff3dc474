-- The recorded auto-resume outlook of every profile of an exchange account (null columns when
-- none was recorded), with its trading gate (WatchdogStore.resume_outlook, for the
-- watchdog_auto_resume asset check).
CREATE OR REPLACE FUNCTION public.recon_resume_outlook(p_account text)
RETURNS TABLE (profile_id text, trading_state text, pause_source text, paused_at timestamptz,
               last_auto_resume_at timestamptz, resume_held_back_by text[],
               resume_conditions jsonb, resume_earliest_at timestamptz,
               resume_clean_cycles_needed integer, clean_cycles integer,
               resume_checked_at timestamptz)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT p.id, p.trading_state, p.pause_source, p.paused_at, p.last_auto_resume_at,
           w.resume_held_back_by, w.resume_conditions, w.resume_earliest_at,
           w.resume_clean_cycles_needed, w.clean_cycles, w.resume_checked_at
    FROM public.profiles p LEFT JOIN recon.watchdog_state w ON w.profile_id = p.id
    WHERE p.exchange_account = p_account
    ORDER BY p.id;
$$;
