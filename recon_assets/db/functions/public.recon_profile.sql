-- One profile's id and exchange account; no row for an unknown profile (TradingTables.profile).
CREATE OR REPLACE FUNCTION public.recon_profile(p_profile_id text)
RETURNS TABLE (id text, exchange_account text)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT p.id, p.exchange_account FROM public.profiles p WHERE p.id = p_profile_id;
$$;
