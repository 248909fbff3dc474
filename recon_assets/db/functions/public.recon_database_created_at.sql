-- When this database got its first migration (`recon migrate` on an empty database); a run
-- that started earlier acted on another database (ReconStore.created_at).
CREATE OR REPLACE FUNCTION public.recon_database_created_at()
RETURNS timestamptz
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT min(applied_at) FROM recon.schema_migrations WHERE kind = 'versioned';
$$;
