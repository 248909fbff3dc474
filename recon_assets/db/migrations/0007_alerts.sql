-- Escalations raised to operators (the runbook's "When to escalate"), one row per alert. The
-- dedup key makes the alert sensor send each escalation once, however often it evaluates.
CREATE TABLE IF NOT EXISTS recon.alerts (
    id               bigserial PRIMARY KEY,
    dedup_key        text NOT NULL UNIQUE,
    reason           text NOT NULL CHECK (reason IN (
                         'persistent_mismatch', 'lock_contention', 'unknown_fill', 'failed_cycle')),
    exchange_account text,
    profile_id       text,
    summary          text NOT NULL,
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,
    raised_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    delivery_error   text
);

-- Reconciliation lock contention: a correction that could not take a profile's lock in time.
CREATE TABLE IF NOT EXISTS recon.lock_contention (
    id           bigserial PRIMARY KEY,
    profile_id   text NOT NULL,
    cycle_id     text NOT NULL,
    waited_ms    integer NOT NULL CHECK (waited_ms >= 0),
    observed_at  timestamptz NOT NULL DEFAULT now()
);
