-- Every profile of an exchange account with its trading gate as public.profiles holds it
-- (WatchdogStore.gates, for the auto-resume rule).
CREATE OR REPLACE FUNCTION public.recon_account_gates(p_account text)
RETURNS TABLE (profile_id text, exchange_account text, trading_state text, pause_source text,
               paused_at timestamptz, last_auto_resume_at timestamptz)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT p.id, p.exchange_account, p.trading_state, p.pause_source, p.paused_at,
           p.last_auto_resume_at
    FROM public.profiles p
    WHERE p.exchange_account = p_account
    ORDER BY p.id;
$$;
