-- The integrity watchdog and auto-resume (issue 12): one verdict per profile per cycle, the
-- history of every change of a profile's trading gate, and the resume outlook on the
-- watchdog's state.

-- The watchdog's verdict for one profile in one cycle (append-only: the trigger is in
-- db/functions/recon.forbid_change.sql): what was charged to the profile, its capital and the
-- threshold, whether it tripped, and whether the cycle was clean for the profile (the
-- auto-resume streak counts these).
CREATE TABLE IF NOT EXISTS recon.watchdog_checks (
    id                     bigserial PRIMARY KEY,
    cycle_id               text NOT NULL,
    exchange_account       text NOT NULL,
    profile_id             text NOT NULL,
    allocated_capital_usd  numeric NOT NULL,
    ghost_notional_usd     numeric NOT NULL DEFAULT 0,
    order_notional_usd     numeric NOT NULL DEFAULT 0,
    position_notional_usd  numeric NOT NULL DEFAULT 0,
    mismatch_notional_usd  numeric NOT NULL CHECK (mismatch_notional_usd >= 0),
    threshold_pct          numeric NOT NULL CHECK (threshold_pct > 0),
    threshold_usd          numeric NOT NULL,
    findings               integer NOT NULL DEFAULT 0,
    tripped                boolean NOT NULL,
    clean                  boolean NOT NULL,
    reason                 text NOT NULL,
    checked_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (cycle_id, profile_id)
);
CREATE INDEX IF NOT EXISTS watchdog_checks_profile_idx
    ON recon.watchdog_checks (profile_id, checked_at DESC);

-- Every change of a profile's trading gate (append-only): the watchdog's pauses, the
-- auto-resumes with their evidence (the clean cycles), and the operators' pauses and resumes
-- with their reasons.
CREATE TABLE IF NOT EXISTS recon.trading_gate_events (
    id                     bigserial PRIMARY KEY,
    profile_id             text NOT NULL REFERENCES public.profiles (id),
    action                 text NOT NULL CHECK (action IN (
                               'watchdog_pause', 'auto_resume', 'operator_pause',
                               'operator_resume')),
    previous_state         text NOT NULL,
    previous_pause_source  text,
    trading_state          text NOT NULL,
    pause_source           text,
    reason                 text NOT NULL,
    cycle_id               text,
    run_id                 text,
    evidence               jsonb NOT NULL DEFAULT '{}'::jsonb,
    at                     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS trading_gate_events_profile_idx
    ON recon.trading_gate_events (profile_id, at DESC);

-- The watchdog's state per profile gains its account, the last verdict's capital and percent,
-- and the auto-resume outlook: which conditions hold the resume back, since when it could
-- happen, and how many clean cycles it still needs.
ALTER TABLE recon.watchdog_state ADD COLUMN exchange_account text;
ALTER TABLE recon.watchdog_state ADD COLUMN allocated_capital_usd numeric;
ALTER TABLE recon.watchdog_state ADD COLUMN threshold_pct numeric;
ALTER TABLE recon.watchdog_state ADD COLUMN last_tripped_cycle_id text;
ALTER TABLE recon.watchdog_state ADD COLUMN resume_held_back_by text[];
ALTER TABLE recon.watchdog_state ADD COLUMN resume_conditions jsonb;
ALTER TABLE recon.watchdog_state ADD COLUMN resume_earliest_at timestamptz;
ALTER TABLE recon.watchdog_state ADD COLUMN resume_clean_cycles_needed integer;
ALTER TABLE recon.watchdog_state ADD COLUMN resume_checked_at timestamptz;

-- The watchdog's pauses and the auto-resumes are alerted.
ALTER TABLE recon.alerts DROP CONSTRAINT IF EXISTS alerts_reason_check;
ALTER TABLE recon.alerts ADD CONSTRAINT alerts_reason_check CHECK (reason IN (
    'persistent_mismatch', 'lock_contention', 'unknown_fill', 'failed_cycle',
    'correction_refused', 'failed_correction_run', 'stale_reconciling', 'watchdog_pause',
    'auto_resume'));

DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT, INSERT ON recon.watchdog_checks, recon.trading_gate_events TO service_role;
        GRANT SELECT, INSERT, UPDATE ON recon.watchdog_state TO service_role;
        GRANT USAGE ON SEQUENCE recon.watchdog_checks_id_seq, recon.trading_gate_events_id_seq
            TO service_role;
    END IF;
END
$grants$;
