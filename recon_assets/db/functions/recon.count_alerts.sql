-- An all-time total /internal/health and /metrics report (migration 0024), moved in the
-- transaction that writes the history rows by a statement-level trigger, which adds the
-- statement's rows by account or profile and kind.
-- Alerts are counted by delivery status: an insert adds to its status, an update (a delivery
-- attempt) moves the row from its old status to its new one (net zero when it stays), a delete
-- (by hand: alerts are not append-only) takes it away.
CREATE OR REPLACE FUNCTION recon.count_alerts() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE recon.alert_totals t SET n = t.n - o.n
        FROM (SELECT exchange_account, profile_id, reason, delivery_status, count(*) AS n
              FROM old_rows GROUP BY 1, 2, 3, 4) o
        WHERE t.exchange_account IS NOT DISTINCT FROM o.exchange_account
          AND t.profile_id IS NOT DISTINCT FROM o.profile_id
          AND t.reason = o.reason AND t.delivery_status = o.delivery_status;
        IF TG_OP = 'DELETE' THEN  -- rows removed by hand: the totals follow
            RETURN NULL;
        END IF;
    END IF;
    INSERT INTO recon.alert_totals AS t (exchange_account, profile_id, reason, delivery_status, n)
    SELECT exchange_account, profile_id, reason, delivery_status, count(*)
    FROM new_rows GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (exchange_account, profile_id, reason, delivery_status)
        DO UPDATE SET n = t.n + EXCLUDED.n;
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS alerts_count_insert ON recon.alerts;
CREATE TRIGGER alerts_count_insert AFTER INSERT ON recon.alerts
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION recon.count_alerts();
DROP TRIGGER IF EXISTS alerts_count_update ON recon.alerts;
CREATE TRIGGER alerts_count_update AFTER UPDATE ON recon.alerts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION recon.count_alerts();
DROP TRIGGER IF EXISTS alerts_count_delete ON recon.alerts;
CREATE TRIGGER alerts_count_delete AFTER DELETE ON recon.alerts
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION recon.count_alerts();
