-- A cap on the lifecycle correction's single-order probes per account and cycle (issue 39): one
-- account with hundreds of orders missing from the exchange must not spend the IP's request
-- weight. Every correction run of a cycle (one per profile, possibly at once) takes its probes
-- from its account's budget for that cycle (public.recon_take_order_probes); what it is not
-- granted waits for the next cycle, which finds those orders missing again.
CREATE TABLE IF NOT EXISTS recon.order_probe_budgets (
    exchange_account text NOT NULL,
    cycle_id         text NOT NULL,
    used             integer NOT NULL CHECK (used >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange_account, cycle_id)
);

-- Like every table of the project (0023): row-level security, nothing for the public roles.
ALTER TABLE recon.order_probe_budgets ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON TABLE recon.order_probe_budgets FROM PUBLIC;
DO $rls$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('REVOKE ALL ON TABLE recon.order_probe_budgets FROM %I', r);
        END IF;
    END LOOP;
END
$rls$;
