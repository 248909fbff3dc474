-- An all-time total /internal/health and /metrics report (migration 0024), moved in the
-- transaction that writes the history rows by a statement-level trigger, which adds the
-- statement's rows by account or profile and kind.
CREATE OR REPLACE FUNCTION recon.count_lock_contention() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN  -- rows removed by hand: the total follows
        UPDATE recon.lock_contention_totals t SET n = t.n - o.n
        FROM (SELECT profile_id, count(*) AS n FROM old_rows GROUP BY 1) o
        WHERE t.profile_id = o.profile_id;
        RETURN NULL;
    END IF;
    INSERT INTO recon.lock_contention_totals AS t (profile_id, n)
    SELECT profile_id, count(*) FROM new_rows GROUP BY 1 ORDER BY 1
    ON CONFLICT (profile_id) DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS lock_contention_count ON recon.lock_contention;
CREATE TRIGGER lock_contention_count AFTER INSERT ON recon.lock_contention
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION recon.count_lock_contention();
DROP TRIGGER IF EXISTS lock_contention_count_delete ON recon.lock_contention;
CREATE TRIGGER lock_contention_count_delete AFTER DELETE ON recon.lock_contention
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION recon.count_lock_contention();
