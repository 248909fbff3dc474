-- /internal/health and /metrics read bounded queries (issue 38): a scrape every few seconds
-- must not count the whole history. The all-time totals the health server reports (findings,
-- corrections, lock contention, alerts) are kept in small tables, one row per account or
-- profile and kind, moved by triggers on the history tables in the inserting transaction
-- (db/functions/recon.count_*.sql), so a total is exact and commits with its rows.
-- Keyed per account or profile, so cycles of different accounts never wait on one counter row.
-- The statuses and kinds stay raw here: recon_health_state filters them with the parameters
-- core/rules.py gives it.
CREATE TABLE IF NOT EXISTS recon.mismatch_totals (
    exchange_account text NOT NULL,
    kind             text NOT NULL,
    n                bigint NOT NULL CHECK (n >= 0),
    PRIMARY KEY (exchange_account, kind)
);
CREATE TABLE IF NOT EXISTS recon.correction_totals (
    profile_id text NOT NULL,
    handler    text NOT NULL,
    outcome    text NOT NULL,
    dry_run    boolean NOT NULL,
    n          bigint NOT NULL CHECK (n >= 0),
    PRIMARY KEY (profile_id, handler, outcome, dry_run)
);
CREATE TABLE IF NOT EXISTS recon.lock_contention_totals (
    profile_id text PRIMARY KEY,
    n          bigint NOT NULL CHECK (n >= 0)
);
-- Alerts by where they are in delivery now: raised all time is the sum over statuses, and
-- undelivered the pending and given-up rows (a delivery attempt moves one from row to row).
CREATE TABLE IF NOT EXISTS recon.alert_totals (
    exchange_account text,
    profile_id       text,
    reason           text NOT NULL,
    delivery_status  text NOT NULL,
    n                bigint NOT NULL CHECK (n >= 0),
    UNIQUE NULLS NOT DISTINCT (exchange_account, profile_id, reason, delivery_status)
);

-- What the history holds already. The lock waits for transactions writing history and holds
-- new ones until this migration (and the triggers created after it, same transaction) commits,
-- so no row is counted twice or missed.
LOCK TABLE recon.mismatches, recon.corrections, recon.lock_contention, recon.alerts IN SHARE MODE;
INSERT INTO recon.mismatch_totals (exchange_account, kind, n)
SELECT exchange_account, kind, count(*) FROM recon.mismatches GROUP BY 1, 2
ON CONFLICT DO NOTHING;
INSERT INTO recon.correction_totals (profile_id, handler, outcome, dry_run, n)
SELECT profile_id, handler, outcome, dry_run, count(*) FROM recon.corrections GROUP BY 1, 2, 3, 4
ON CONFLICT DO NOTHING;
INSERT INTO recon.lock_contention_totals (profile_id, n)
SELECT profile_id, count(*) FROM recon.lock_contention GROUP BY 1
ON CONFLICT DO NOTHING;
INSERT INTO recon.alert_totals (exchange_account, profile_id, reason, delivery_status, n)
SELECT exchange_account, profile_id, reason, delivery_status, count(*)
FROM recon.alerts GROUP BY 1, 2, 3, 4
ON CONFLICT DO NOTHING;

-- The accounts with cycles, the latest finished and the latest succeeded cycle of an account:
-- index probes; the alerts of the last day by their time.
CREATE INDEX IF NOT EXISTS cycles_account_status_finished_idx
    ON recon.cycles (exchange_account, status, finished_at DESC NULLS LAST, started_at DESC);
CREATE INDEX IF NOT EXISTS alerts_raised_idx ON recon.alerts (raised_at);

-- Like every table of the project (0023): row-level security, nothing for the public roles.
DO $rls$
DECLARE
    t text;
    r text;
BEGIN
    FOREACH t IN ARRAY ARRAY['recon.mismatch_totals', 'recon.correction_totals',
                             'recon.lock_contention_totals', 'recon.alert_totals'] LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM PUBLIC', t);
        FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
            IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
                EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %s FROM %I', t, r);
            END IF;
        END LOOP;
    END LOOP;
END
$rls$;
