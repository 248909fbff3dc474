-- public.recon_record_operator_action(p_job, p_run_id, p_user, p_config)
-- An operator job records its launch before it acts (recon.operator_actions, append-only).
-- Returns the row's id.
CREATE OR REPLACE FUNCTION public.recon_record_operator_action(
    p_job text, p_run_id text, p_user text, p_config jsonb)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    new_id bigint;
BEGIN
    IF COALESCE(pg_catalog.btrim(p_job), '') = '' OR COALESCE(pg_catalog.btrim(p_run_id), '') = '' THEN
        RAISE EXCEPTION 'recon_record_operator_action: a job and a run id are required';
    END IF;
    INSERT INTO recon.operator_actions (job, run_id, dagster_user, config)
    VALUES (p_job, p_run_id, NULLIF(pg_catalog.btrim(p_user), ''),
            COALESCE(p_config, '{}'::jsonb))
    RETURNING id INTO new_id;
    RETURN new_id;
END;
$$;
