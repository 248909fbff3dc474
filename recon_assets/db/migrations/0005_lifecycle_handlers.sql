-- The tables of the lifecycle-safe handlers (their functions are repeatable SQL in
-- db/functions/: recon._run_correction.sql is the frame, public.recon_reconcile_*.sql the
-- runbook's reconcileEntryFill / reconcileExitFill / reconcileCancel, and
-- public.recon_begin_reconciling.sql the trading state while correcting).

CREATE SCHEMA IF NOT EXISTS recon;

-- While a profile is being corrected: which cycle (Dagster run) set trading_state = 'reconciling'
-- and since when, so a profile stranded by a crash is visible and the next run takes it over.
CREATE TABLE IF NOT EXISTS recon.reconciling (
    profile_id  text PRIMARY KEY REFERENCES public.profiles (id),
    cycle_id    text,
    started_at  timestamptz NOT NULL DEFAULT now()
);

-- The tables the handlers touch in schema recon, for Supabase's service_role (the role
-- supabase-py's rpc() runs as with the service key; the functions are SECURITY INVOKER).
-- EXECUTE on the functions: db/functions/grants.sql.
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT USAGE ON SCHEMA recon TO service_role;
        GRANT SELECT, INSERT ON recon.corrections TO service_role;
        GRANT USAGE ON SEQUENCE recon.corrections_id_seq TO service_role;
        GRANT SELECT, INSERT, UPDATE, DELETE ON recon.reconciling TO service_role;
    END IF;
END
$grants$;
