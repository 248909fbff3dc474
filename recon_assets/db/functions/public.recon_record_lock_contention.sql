-- A correction that waited for (or gave up on) a profile's lock: one row of
-- recon.lock_contention, which the escalation rules read (ReconStore.record_lock_contention).
CREATE OR REPLACE FUNCTION public.recon_record_lock_contention(
    p_profile_id text, p_cycle_id text, p_waited_ms integer, p_lock_kind text,
    p_lock_object text DEFAULT NULL)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    INSERT INTO recon.lock_contention (profile_id, cycle_id, waited_ms, lock_kind, lock_object)
    VALUES (p_profile_id, p_cycle_id, p_waited_ms, p_lock_kind, p_lock_object);
$$;
