-- Every operator job's launch (pause, resume, quarantine resolution, backfill review, policy
-- replay), recorded before it acts, where the Dagster UI cannot erase it: the job, its run id,
-- the `dagster/user` tag when the deployment sets it (Dagster+ does; OSS Dagster knows no user),
-- and the run's whole config (append-only: the trigger is in recon.forbid_change.sql).
CREATE TABLE IF NOT EXISTS recon.operator_actions (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    job text NOT NULL,
    run_id text NOT NULL,
    dagster_user text,
    config jsonb NOT NULL
);

CREATE INDEX IF NOT EXISTS operator_actions_at_idx ON recon.operator_actions (at DESC);
