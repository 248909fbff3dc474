-- Whether p_cycle_id is recorded as a cycle of p_account with p_status
-- (ReconStore.cycle_succeeded).
CREATE OR REPLACE FUNCTION public.recon_cycle_has_status(
    p_cycle_id text, p_account text, p_status text)
RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT EXISTS (SELECT 1 FROM recon.cycles c WHERE c.cycle_id = p_cycle_id
                   AND c.exchange_account = p_account AND c.status = p_status);
$$;
