-- The profiles of p_account with a parity check of decision p_decision in the cycle, in name
-- order (ReconStore.profiles_with_parity_decision).
CREATE OR REPLACE FUNCTION public.recon_profiles_with_parity_decision(
    p_cycle_id text, p_account text, p_decision text)
RETURNS SETOF text
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT DISTINCT c.profile_id FROM recon.parity_checks c
    WHERE c.cycle_id = p_cycle_id AND c.exchange_account = p_account
      AND c.decision = p_decision
    ORDER BY c.profile_id;
$$;
