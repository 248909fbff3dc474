-- Append-only history: analysts can trust these tables because nothing rewrites them. The
-- trigger function refuses UPDATE and DELETE; the triggers below name every append-only table
-- (a new history table gets its trigger here, not in its migration).
CREATE OR REPLACE FUNCTION recon.forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'recon.% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP;
END;
$$;

DROP TRIGGER IF EXISTS mismatches_append_only ON recon.mismatches;
CREATE TRIGGER mismatches_append_only BEFORE UPDATE OR DELETE ON recon.mismatches
    FOR EACH ROW EXECUTE FUNCTION recon.forbid_change();

DROP TRIGGER IF EXISTS backfill_decisions_append_only ON recon.backfill_decisions;
CREATE TRIGGER backfill_decisions_append_only BEFORE UPDATE OR DELETE ON recon.backfill_decisions
    FOR EACH ROW EXECUTE FUNCTION recon.forbid_change();

DROP TRIGGER IF EXISTS corrections_append_only ON recon.corrections;
CREATE TRIGGER corrections_append_only BEFORE UPDATE OR DELETE ON recon.corrections
    FOR EACH ROW EXECUTE FUNCTION recon.forbid_change();

DROP TRIGGER IF EXISTS parity_checks_append_only ON recon.parity_checks;
CREATE TRIGGER parity_checks_append_only BEFORE UPDATE OR DELETE ON recon.parity_checks
    FOR EACH ROW EXECUTE FUNCTION recon.forbid_change();

DROP TRIGGER IF EXISTS watchdog_checks_append_only ON recon.watchdog_checks;
CREATE TRIGGER watchdog_checks_append_only BEFORE UPDATE OR DELETE ON recon.watchdog_checks
    FOR EACH ROW EXECUTE FUNCTION recon.forbid_change();

DROP TRIGGER IF EXISTS trading_gate_events_append_only ON recon.trading_gate_events;
CREATE TRIGGER trading_gate_events_append_only BEFORE UPDATE OR DELETE ON recon.trading_gate_events
    FOR EACH ROW EXECUTE FUNCTION recon.forbid_change();

DROP TRIGGER IF EXISTS backfill_reviews_append_only ON recon.backfill_reviews;
CREATE TRIGGER backfill_reviews_append_only BEFORE UPDATE OR DELETE ON recon.backfill_reviews
    FOR EACH ROW EXECUTE FUNCTION recon.forbid_change();

DROP TRIGGER IF EXISTS reconciling_revoked_append_only ON recon.reconciling_revoked;
CREATE TRIGGER reconciling_revoked_append_only BEFORE UPDATE OR DELETE ON recon.reconciling_revoked
    FOR EACH ROW EXECUTE FUNCTION recon.forbid_change();

DROP TRIGGER IF EXISTS operator_actions_append_only ON recon.operator_actions;
CREATE TRIGGER operator_actions_append_only BEFORE UPDATE OR DELETE ON recon.operator_actions
    FOR EACH ROW EXECUTE FUNCTION recon.forbid_change();
