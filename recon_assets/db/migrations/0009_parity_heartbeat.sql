-- The parity heartbeat (issue 11): one check per open slice per cycle, the streaks of
-- consecutive confirmations, and quarantine with its evidence and resolution.

-- One check of one open lifecycle slice in one cycle: what the exchange showed, what the slices
-- claimed, the streak, and the decision with the rule that made it (append-only: the trigger is
-- in db/functions/recon.forbid_change.sql).
CREATE TABLE IF NOT EXISTS recon.parity_checks (
    id                     bigserial PRIMARY KEY,
    cycle_id               text NOT NULL,
    exchange_account       text NOT NULL,
    profile_id             text NOT NULL,
    trade_id               text NOT NULL,
    slice_no               integer NOT NULL,
    symbol                 text NOT NULL,
    side                   text NOT NULL CHECK (side IN ('long', 'short')),
    virtual_open_qty       numeric NOT NULL,
    exchange_qty           numeric,            -- the account's signed net position on the symbol
    slices_qty             numeric,            -- the signed sum of the open slices on the symbol
    min_qty_step           numeric,
    mark_price             numeric,
    price_source           text,
    mismatch_notional_usd  numeric NOT NULL DEFAULT 0 CHECK (mismatch_notional_usd >= 0),
    attributable           boolean NOT NULL,
    attribution            text,
    ghost                  boolean NOT NULL,
    ghost_reason           text,
    streak                 integer NOT NULL DEFAULT 0 CHECK (streak >= 0),
    confirmations_required integer NOT NULL CHECK (confirmations_required >= 1),
    streak_started_cycle   text,
    decision               text NOT NULL CHECK (decision IN (
                               'cleared', 'confirming', 'synthetic_exit', 'quarantine', 'blocked',
                               'ambiguous', 'held', 'backfill')),
    reason                 text NOT NULL,
    idempotency_key        text,
    dry_run                boolean NOT NULL DEFAULT false,
    checked_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (cycle_id, profile_id, trade_id, slice_no)
);
CREATE INDEX IF NOT EXISTS parity_checks_slice_idx
    ON recon.parity_checks (profile_id, trade_id, slice_no, checked_at DESC);
CREATE INDEX IF NOT EXISTS parity_checks_account_cycle_idx
    ON recon.parity_checks (exchange_account, cycle_id);

ALTER TABLE recon.parity_confirmations ADD COLUMN exchange_account text;

-- Quarantine: why (the evidence), and how it ended (released by the heartbeat when the mismatch
-- cleared, or by an operator's resolve_quarantine run, with the resolution and a note).
ALTER TABLE recon.quarantine ADD COLUMN exchange_account text;
ALTER TABLE recon.quarantine ADD COLUMN evidence jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE recon.quarantine ADD COLUMN resolution text;
ALTER TABLE recon.quarantine ADD COLUMN note text;
