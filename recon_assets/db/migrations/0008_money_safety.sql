-- Money safety (issue 10): refused corrections on record, fees kept in their own asset, lock
-- contention told apart, the evidence of each cycle, and the new escalation reasons.

-- A correction that a check refused or that failed is recorded too, with its reason, so "why was
-- this order not corrected?" has an answer in SQL. outcome: applied (with dry_run: would have
-- been applied), refused (a check of the decision or of the handler stopped it: an operator
-- looks), failed (an unexpected error). Only applied rows hold an idempotency key: a refusal
-- never blocks the correction that is right once the cause is fixed.
ALTER TABLE recon.corrections ADD COLUMN outcome text NOT NULL DEFAULT 'applied'
    CHECK (outcome IN ('applied', 'refused', 'failed'));
ALTER TABLE recon.corrections ADD COLUMN reason text;
ALTER TABLE recon.corrections ALTER COLUMN idempotency_key DROP NOT NULL;
ALTER TABLE recon.corrections ADD CONSTRAINT corrections_key_when_applied
    CHECK ((outcome = 'applied') = (idempotency_key IS NOT NULL));
CREATE INDEX IF NOT EXISTS corrections_outcome_idx ON recon.corrections (outcome, applied_at)
    WHERE outcome <> 'applied';

-- Fees as the exchange charged them (asset and amount) and their USD value at the fill's time;
-- fee_usd is NULL when no price of the asset is known: unknown, never zero.
ALTER TABLE public.applied_fills ADD COLUMN fee_asset text;
ALTER TABLE public.applied_fills ADD COLUMN fee_amount numeric;
ALTER TABLE public.applied_fills ALTER COLUMN fee_usd DROP NOT NULL;
ALTER TABLE public.applied_fills ALTER COLUMN fee_usd DROP DEFAULT;
ALTER TABLE recon.exchange_fills ADD COLUMN fee_asset text;
ALTER TABLE recon.exchange_fills ADD COLUMN fee_amount numeric;
ALTER TABLE recon.exchange_fills ALTER COLUMN fee_usd DROP NOT NULL;
ALTER TABLE recon.exchange_fills ALTER COLUMN fee_usd DROP DEFAULT;

-- Which lock a correction waited for: the profile's reconciliation lock (another reconciler) or
-- a row lock (the trading app, or any other writer, holding the order or profile row).
ALTER TABLE recon.lock_contention ADD COLUMN lock_kind text NOT NULL DEFAULT 'reconciliation_lock'
    CHECK (lock_kind IN ('reconciliation_lock', 'row_lock'));
ALTER TABLE recon.lock_contention ADD COLUMN lock_object text;

-- The evidence a cycle's diff was made from: when each side was read, and by which run.
ALTER TABLE recon.cycles ADD COLUMN db_read_at timestamptz;
ALTER TABLE recon.cycles ADD COLUMN exchange_read_at timestamptz;
ALTER TABLE recon.cycles ADD COLUMN db_run_id text;
ALTER TABLE recon.cycles ADD COLUMN exchange_run_id text;

ALTER TABLE recon.alerts DROP CONSTRAINT IF EXISTS alerts_reason_check;
ALTER TABLE recon.alerts ADD CONSTRAINT alerts_reason_check CHECK (reason IN (
    'persistent_mismatch', 'lock_contention', 'unknown_fill', 'failed_cycle',
    'correction_refused', 'failed_correction_run', 'stale_reconciling'));
