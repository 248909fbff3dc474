-- Self-healing that never guesses (issue 37): what each heartbeat check waited for, the runs of
-- supported cycles that release a quarantine, the watchdog's evidence and its account-level
-- finds, and which attempt of a cycle recorded its decisions.

-- A check's real evidence waiting to be booked (core.evidence; or the systemic verdict): why the
-- slice is held instead of closed. A quarantined slice's run of consecutive cycles the exchange
-- supported it (the quarantine is released at the confirmation count).
ALTER TABLE recon.parity_checks ADD COLUMN hold_reason text;
ALTER TABLE recon.parity_checks ADD COLUMN clear_streak integer NOT NULL DEFAULT 0
    CHECK (clear_streak >= 0);
ALTER TABLE recon.parity_checks ADD COLUMN clear_started_cycle text;
-- The Dagster run (attempt) that recorded a cycle's checks and backfill decisions: a retried
-- cycle acts only on decisions its own attempt recorded, never on an earlier attempt's, which
-- were made from other snapshots.
ALTER TABLE recon.parity_checks ADD COLUMN run_id text;
ALTER TABLE recon.backfill_decisions ADD COLUMN run_id text;

ALTER TABLE recon.quarantine ADD COLUMN clear_count integer NOT NULL DEFAULT 0;
ALTER TABLE recon.quarantine ADD COLUMN clear_started_cycle text;
ALTER TABLE recon.quarantine ADD COLUMN clear_last_cycle text;

-- The watchdog's verdict says what it could not check (a finding about the profile the recency
-- guard held back), which legs the profile's own unbooked fills are on (the evidence a position
-- drift is charged by), and a systemic verdict on the account.
ALTER TABLE recon.watchdog_checks ADD COLUMN not_fully_checked text;
ALTER TABLE recon.watchdog_checks ADD COLUMN evidence_legs jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE recon.watchdog_checks ADD COLUMN systemic text;

-- Per cycle: the profiles a finding held back by the recency guard concerned (profile -> why),
-- and the position drift no profile could be charged with (account level).
ALTER TABLE recon.cycles ADD COLUMN not_fully_checked jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE recon.cycles ADD COLUMN uncharged_drift jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE recon.cycles ADD COLUMN uncharged_drift_usd numeric NOT NULL DEFAULT 0
    CHECK (uncharged_drift_usd >= 0);

-- A released quarantine, drift charged to no profile, and a systemic account are alerted.
ALTER TABLE recon.alerts DROP CONSTRAINT IF EXISTS alerts_reason_check;
ALTER TABLE recon.alerts ADD CONSTRAINT alerts_reason_check CHECK (reason IN (
    'persistent_mismatch', 'lock_contention', 'unknown_fill', 'failed_cycle',
    'correction_refused', 'failed_correction_run', 'stale_reconciling', 'watchdog_pause',
    'auto_resume', 'quarantine_released', 'uncharged_drift', 'systemic'));
