-- Every profile's id: the partitions of the correction jobs (TradingTables.profile_ids).
-- SETOF text, not a one-column TABLE: both backends give a list of strings.
CREATE OR REPLACE FUNCTION public.recon_profile_ids()
RETURNS SETOF text
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT p.id FROM public.profiles p;
$$;
