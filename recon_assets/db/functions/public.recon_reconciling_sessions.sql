-- The reconciling sessions of an account's profiles, or of one profile (p_profile_id): the
-- owner run, since when, its age in seconds by the database clock, and the profile's trading
-- state (ReconStore.reconciling_sessions and reconciling_owner).
CREATE OR REPLACE FUNCTION public.recon_reconciling_sessions(
    p_account text DEFAULT NULL, p_profile_id text DEFAULT NULL)
RETURNS TABLE (profile_id text, owner text, started_at timestamptz, trading_state text,
               age_s double precision)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT r.profile_id, r.cycle_id, r.started_at, p.trading_state::text,
           extract(epoch FROM now() - r.started_at)::float8
    FROM recon.reconciling r JOIN public.profiles p ON p.id = r.profile_id
    WHERE (p_account IS NULL OR p.exchange_account = p_account)
      AND (p_profile_id IS NULL OR r.profile_id = p_profile_id)
    ORDER BY r.profile_id;
$$;
