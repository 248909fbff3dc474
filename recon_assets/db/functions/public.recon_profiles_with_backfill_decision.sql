-- The ids of the profiles (each once, in order) with at least one EXIT backfill decision
-- p_decision (GO) in one cycle of an account (BackfillStore.profiles_with_decision, for the
-- backfill sensor). SETOF text, not a one-column TABLE: both backends give a list of strings.
CREATE OR REPLACE FUNCTION public.recon_profiles_with_backfill_decision(
    p_cycle_id text, p_account text, p_decision text)
RETURNS SETOF text
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT DISTINCT d.profile_id FROM recon.backfill_decisions d
    WHERE d.cycle_id = p_cycle_id AND d.exchange_account = p_account
      AND d.decision = p_decision AND d.profile_id IS NOT NULL
    ORDER BY d.profile_id;
$$;
