-- Supabase's public API keys reach no table of this project (issue 38). A Supabase project gives
-- its API roles anon and authenticated ALL on every table created in schema public (default
-- privileges), and the anon key is public by design: without row-level security anyone holding
-- it could read and write the trading tables through the Data API. Every trading table and every
-- table of schema recon gets row-level security with no policy for anon or authenticated (so
-- they would see no row and write none), and their privileges (and PUBLIC's) are revoked.
--
-- Who still reaches them: the tables' owner (the role that migrates; the recon_* functions are
-- SECURITY DEFINER and run as it), Supabase's service_role (BYPASSRLS), and the reconciler's
-- role through the policy `recon grant-reconciler` gives it on the four tables
-- recon_snapshot_account reads as its caller. A trading app that connects as a role of its own
-- (neither the owner nor BYPASSRLS) needs a policy for it (docs/deployment.md, "Security model").
-- A later migration that creates a table adds the same (test_recon_store_backends.py checks it).
DO $rls$
DECLARE
    t regclass;
    s regclass;
    r text;
BEGIN
    FOR t IN
        SELECT c.oid::regclass FROM pg_catalog.pg_class c
         WHERE c.relkind IN ('r', 'p')
           AND (c.relnamespace = 'recon'::regnamespace
                OR (c.relnamespace = 'public'::regnamespace
                    AND c.relname IN ('profiles', 'orders', 'positions', 'trade_history',
                                      'applied_fills', 'capital_ledger')))
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC', t);
        FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
                EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM %I', t, r);
                -- The id sequences of the table (serial / identity columns).
                FOR s IN
                    SELECT d.objid::regclass FROM pg_catalog.pg_depend d
                      JOIN pg_catalog.pg_class q ON q.oid = d.objid AND q.relkind = 'S'
                     WHERE d.refobjid = t AND d.classid = 'pg_catalog.pg_class'::regclass
                LOOP
                    EXECUTE pg_catalog.format('REVOKE ALL ON SEQUENCE %s FROM %I', s, r);
                END LOOP;
            END IF;
        END LOOP;
    END LOOP;
END
$rls$;
