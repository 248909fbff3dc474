-- Who may call what. Applied after every other file here, each time they are applied, because
-- CREATE OR REPLACE keeps a function's privileges but a DROP + CREATE (a changed signature)
-- starts again from PostgreSQL's default (EXECUTE for PUBLIC).
--
-- The handlers change money state and the reads return the reconciler's records, so PUBLIC may
-- not call them (on Supabase neither may anon / authenticated, to whom the default privileges of
-- schema public would otherwise give EXECUTE through the Data API). The owner (the role that
-- migrates) keeps EXECUTE. Where Supabase's service_role exists (the role supabase-py's rpc()
-- runs as with the service key), it gets EXECUTE; the functions are SECURITY DEFINER with an
-- empty search_path, so they run as their owner and service_role needs no table grant
-- (recon_snapshot_account reads the trading tables in public as its caller).
DO $grants$
DECLARE
    fn text;
    r text;
BEGIN
    -- Every function of this project in schema public (the handlers, the recorders, and the
    -- reads the store makes through rpc() on the Supabase path): named recon_*. Except
    -- recon_profile_lock_key, a pure function of a profile id that the trading bots call to
    -- take the same advisory lock.
    FOR fn IN
        SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'
           AND p.proname LIKE 'recon\_%' AND p.proname <> 'recon_profile_lock_key'
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
                EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %I', fn, r);
            END IF;
        END LOOP;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO service_role', fn);
        END IF;
    END LOOP;
END
$grants$;

-- The trading gate view tells who is paused and why: not for PUBLIC (nor anon/authenticated on
-- Supabase). The trading app's role gets SELECT on it and EXECUTE on recon_may_trade from the
-- deployment (README: "The trading gate").
DO $grants$
DECLARE
    r text;
BEGIN
    REVOKE ALL ON public.recon_trading_gate FROM PUBLIC;
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON public.recon_trading_gate FROM %I', r);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT ON public.recon_trading_gate TO service_role;
    END IF;
END
$grants$;

-- The functions of schema recon are internal: the handlers (SECURITY DEFINER) call them as their
-- owner. PostgreSQL gives PUBLIC EXECUTE on every new function, and a role with USAGE on schema
-- recon (service_role, the reconciler's role: recon_snapshot_account needs it) could otherwise
-- call recon._apply_synthetic_exit and the other internals directly, around the handlers' locks
-- and checks. Only recon.open_order_statuses(), which recon_snapshot_account calls as its caller,
-- is granted: to service_role here, to the reconciler's role by recon_assets/db/reconciler_role.py.
DO $grants$
DECLARE
    fn text;
    r text;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure::text FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'recon'::regnamespace
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
                EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %I', fn, r);
            END IF;
        END LOOP;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT EXECUTE ON FUNCTION recon.open_order_statuses() TO service_role;
    END IF;
END
$grants$;
