-- The reconciling gate has one owner, even when restored (issue item 8). A run whose session was
-- ended by someone else (the next cycle restored it as stale, an operator ended it) or taken over
-- by another run has lost the gate for good: recorded here, so its later money calls are refused
-- (recon._run_correction.sql, DETAIL gate_revoked), its end restores nothing and its begin is
-- refused (public.recon_begin_reconciling.sql), even once no session is left to compare with.

-- One row per revoked owner and profile (append-only: the trigger is created with the gate's
-- functions, db/functions/public.recon_begin_reconciling.sql).
CREATE TABLE IF NOT EXISTS recon.reconciling_revoked (
    id          bigserial PRIMARY KEY,
    profile_id  text NOT NULL REFERENCES public.profiles (id),
    cycle_id    text NOT NULL,            -- the run that lost the gate
    revoked_by  text,                     -- the run that restored or took it over; NULL: an operator
    why         text NOT NULL CHECK (why IN ('restored', 'taken_over')),
    started_at  timestamptz,              -- when the revoked session began
    revoked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS reconciling_revoked_owner_idx
    ON recon.reconciling_revoked (profile_id, cycle_id);

DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT, INSERT ON recon.reconciling_revoked TO service_role;
        GRANT USAGE ON SEQUENCE recon.reconciling_revoked_id_seq TO service_role;
    END IF;
END
$grants$;
