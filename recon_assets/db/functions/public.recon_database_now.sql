-- The database's clock, now(): pauses and resumes are stamped by it, so the auto-resume rule
-- reads it too (WatchdogStore.now).
CREATE OR REPLACE FUNCTION public.recon_database_now()
RETURNS timestamptz
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT now();
$$;
