-- The reconciliation lock: one reconciler per profile at a time.
--
--   public.recon_profile_lock_key(p_profile_id)  the lock's bigint key
--   recon._lock_profile(p_profile_id)            takes it for the caller's transaction
--
-- The reconciliation lock's key for a profile:
--   the first 8 bytes of sha256(utf8('recon:profile:' || profile_id)), big-endian, as a signed
--   bigint (two's complement).
-- sha256 rather than hashtextextended(): the value is documented, stable across PostgreSQL
-- versions and computable anywhere; recon_assets.core.corrections.profile_lock_key is the same
-- derivation in Python (tests check they agree).
-- In pg_locks the lock shows as locktype = 'advisory', objsubid = 1, and the key split into its
-- two 32-bit halves, each read as an UNSIGNED oid: classid = the high half, objid = the low
-- half. For a negative key that is not `key >> 32` (SQL's shift keeps the sign): it is
-- (key >> 32) & 4294967295 for classid and key & 4294967295 for objid
-- (recon_assets.core.corrections.pg_locks_ids computes the same pair).
CREATE OR REPLACE FUNCTION public.recon_profile_lock_key(p_profile_id text)
RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = ''
AS $$
    SELECT ('x' || pg_catalog.encode(
                pg_catalog.substr(
                    pg_catalog.sha256(pg_catalog.convert_to('recon:profile:' || p_profile_id, 'UTF8')),
                    1, 8),
                'hex'))::bit(64)::bigint
$$;

-- pg_advisory_xact_lock: transaction-scoped, so it works behind Supabase's transaction pooler and
-- is released by COMMIT/ROLLBACK and by the death of the connection. Re-entrant inside one
-- transaction. A caller that must not wait forever sets lock_timeout.
CREATE OR REPLACE FUNCTION recon._lock_profile(p_profile_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF p_profile_id IS NULL OR p_profile_id = '' THEN
        RAISE EXCEPTION 'recon: a profile id is required to take the reconciliation lock';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(public.recon_profile_lock_key(p_profile_id));
END;
$$;
