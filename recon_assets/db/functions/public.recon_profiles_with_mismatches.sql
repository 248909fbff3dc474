-- The profiles with at least one mismatch of the kinds p_kinds (a JSON array of text) in the
-- cycle of p_account, in name order (ReconStore.profiles_with_mismatches).
CREATE OR REPLACE FUNCTION public.recon_profiles_with_mismatches(
    p_cycle_id text, p_account text, p_kinds jsonb)
RETURNS SETOF text
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT DISTINCT m.profile_id FROM recon.mismatches m
    WHERE m.cycle_id = p_cycle_id AND m.exchange_account = p_account
      AND m.profile_id IS NOT NULL AND m.kind IN (SELECT jsonb_array_elements_text(p_kinds))
    ORDER BY m.profile_id;
$$;
