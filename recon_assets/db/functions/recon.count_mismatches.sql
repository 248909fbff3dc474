-- An all-time total /internal/health and /metrics report (migration 0024), moved in the
-- transaction that writes the history rows by a statement-level trigger, which adds the
-- statement's rows by account or profile and kind.
CREATE OR REPLACE FUNCTION recon.count_mismatches() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    INSERT INTO recon.mismatch_totals AS t (exchange_account, kind, n)
    SELECT exchange_account, kind, count(*) FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (exchange_account, kind) DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS mismatches_count ON recon.mismatches;
CREATE TRIGGER mismatches_count AFTER INSERT ON recon.mismatches
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION recon.count_mismatches();
