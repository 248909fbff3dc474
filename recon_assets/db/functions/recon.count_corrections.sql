-- An all-time total /internal/health and /metrics report (migration 0024), moved in the
-- transaction that writes the history rows by a statement-level trigger, which adds the
-- statement's rows by account or profile and kind.
CREATE OR REPLACE FUNCTION recon.count_corrections() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    INSERT INTO recon.correction_totals AS t (profile_id, handler, outcome, dry_run, n)
    SELECT profile_id, handler, outcome, dry_run, count(*) FROM new_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (profile_id, handler, outcome, dry_run) DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS corrections_count ON recon.corrections;
CREATE TRIGGER corrections_count AFTER INSERT ON recon.corrections
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION recon.count_corrections();
