-- An operator's action (pause, resume, a backfill review, a quarantine's end) is taken only for
-- a run that recorded its request first: every operator job writes its job, run id, user tag
-- and whole config to recon.operator_actions before it acts (defs/operator_record.py). A call
-- whose run id no operator job of the right kind recorded (invented, or reused from another
-- job) is refused, RCREF no_recorded_request, and changes nothing.
CREATE OR REPLACE FUNCTION recon._require_operator_request(h text, p_run_id text, p_jobs text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF p_run_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM recon.operator_actions a
             WHERE a.run_id = p_run_id AND a.job = ANY (p_jobs)) THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'no_recorded_request',
            MESSAGE = pg_catalog.format(
                '%s: run %s recorded no %s request (recon.operator_actions): an operator action is taken only for the run that recorded it',
                h, COALESCE(p_run_id, '(none given)'), pg_catalog.array_to_string(p_jobs, ' or '));
    END IF;
END;
$$;
