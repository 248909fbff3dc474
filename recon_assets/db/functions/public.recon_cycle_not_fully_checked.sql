-- The profiles of one cycle of an account that a finding held back by the recency guard
-- concerned, profile -> why (recorded by the diff; the integrity watchdog calls no such
-- profile's cycle clean). WatchdogStore.not_fully_checked.
CREATE OR REPLACE FUNCTION public.recon_cycle_not_fully_checked(p_cycle_id text, p_account text)
RETURNS jsonb
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT COALESCE((SELECT c.not_fully_checked FROM recon.cycles c
                     WHERE c.cycle_id = p_cycle_id AND c.exchange_account = p_account),
                    '{}'::jsonb);
$$;
