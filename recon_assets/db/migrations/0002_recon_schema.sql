-- Reconciliation's own schema. History tables (cycles, mismatches, corrections, backfill
-- decisions) are append-only so analysts can trust them: one row per finding per cycle, stamped
-- with the Dagster run id that produced it (the cycle id). The append-only triggers are in
-- db/functions/recon.forbid_change.sql.

CREATE SCHEMA IF NOT EXISTS recon;

CREATE TABLE IF NOT EXISTS recon.cycles (
    cycle_id          text NOT NULL,
    exchange_account  text NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    status            text NOT NULL DEFAULT 'running'
                      CHECK (status IN ('running', 'succeeded', 'failed')),
    mismatch_count    integer CHECK (mismatch_count >= 0),
    error             text,
    PRIMARY KEY (cycle_id, exchange_account)
);
CREATE INDEX IF NOT EXISTS cycles_started_idx ON recon.cycles (started_at DESC);

CREATE TABLE IF NOT EXISTS recon.mismatches (
    id                 bigserial PRIMARY KEY,
    cycle_id           text NOT NULL,
    observed_at        timestamptz NOT NULL DEFAULT now(),
    kind               text NOT NULL CHECK (kind IN (
                           'missing_from_exchange', 'missing_in_db', 'qty_drift',
                           'status_drift', 'price_drift', 'position_drift', 'ghost_slice')),
    profile_id         text,
    exchange_account   text NOT NULL,
    symbol             text,
    client_order_id    text,
    exchange_order_id  text,
    trade_id           text,
    attributable       boolean NOT NULL DEFAULT true,
    db_qty             numeric,
    exchange_qty       numeric,
    db_status          text,
    exchange_status    text,
    db_price           numeric,
    exchange_price     numeric,
    notional_usd       numeric NOT NULL DEFAULT 0 CHECK (notional_usd >= 0),
    details            jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS mismatches_cycle_idx ON recon.mismatches (cycle_id);
CREATE INDEX IF NOT EXISTS mismatches_profile_time_idx ON recon.mismatches (profile_id, observed_at);

-- Consecutive parity-heartbeat sightings of a ghost slice; reset when the slice is seen healthy.
CREATE TABLE IF NOT EXISTS recon.parity_confirmations (
    profile_id          text NOT NULL,
    trade_id            text NOT NULL,
    slice_no            integer NOT NULL,
    consecutive_count   integer NOT NULL CHECK (consecutive_count >= 0),
    first_seen_cycle    text NOT NULL,
    last_seen_cycle     text NOT NULL,
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile_id, trade_id, slice_no)
);

CREATE TABLE IF NOT EXISTS recon.quarantine (
    id           bigserial PRIMARY KEY,
    profile_id   text NOT NULL,
    trade_id     text NOT NULL,
    slice_no     integer NOT NULL DEFAULT 1,
    reason       text NOT NULL,
    cycle_id     text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    released_at  timestamptz,
    released_by  text
);
-- At most one open quarantine per slice.
CREATE UNIQUE INDEX IF NOT EXISTS quarantine_open_uq ON recon.quarantine (profile_id, trade_id, slice_no)
    WHERE released_at IS NULL;

CREATE TABLE IF NOT EXISTS recon.backfill_decisions (
    id               bigserial PRIMARY KEY,
    cycle_id         text NOT NULL,
    profile_id       text NOT NULL,
    trade_id         text NOT NULL,
    slice_no         integer NOT NULL DEFAULT 1,
    decision         text NOT NULL CHECK (decision IN ('GO', 'NO_GO')),
    match_mode       text,
    exchange_fill_ids text[] NOT NULL DEFAULT '{}',
    reason           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Every correction, applied or (in dry run) only decided. The idempotency key is deterministic
-- (profile, trade, fill or order id, handler), so a re-run can never apply a correction twice.
CREATE TABLE IF NOT EXISTS recon.corrections (
    id               bigserial PRIMARY KEY,
    idempotency_key  text NOT NULL UNIQUE,
    cycle_id         text NOT NULL,
    profile_id       text NOT NULL,
    handler          text NOT NULL CHECK (handler IN (
                         'reconcile_entry_fill', 'reconcile_exit_fill', 'reconcile_cancel',
                         'exit_backfill', 'synthetic_exit', 'adopt_order')),
    trade_id         text,
    client_order_id  text,
    dry_run          boolean NOT NULL DEFAULT false,
    evidence         jsonb NOT NULL DEFAULT '{}'::jsonb,
    applied_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS corrections_profile_idx ON recon.corrections (profile_id, applied_at);

-- Integrity watchdog state per profile: why it paused, and the clean-cycle streak since.
CREATE TABLE IF NOT EXISTS recon.watchdog_state (
    profile_id             text PRIMARY KEY,
    triggered              boolean NOT NULL DEFAULT false,
    pause_source           text,
    paused_at              timestamptz,
    clean_cycles           integer NOT NULL DEFAULT 0 CHECK (clean_cycles >= 0),
    last_auto_resume_at    timestamptz,
    last_cycle_id          text,
    mismatch_notional_usd  numeric NOT NULL DEFAULT 0,
    threshold_usd          numeric NOT NULL DEFAULT 0,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Latest materialized value of each snapshot asset per partition (parquet bytes), written by the
-- Postgres IO manager so every run on every machine reads the same snapshot.
CREATE TABLE IF NOT EXISTS recon.asset_values (
    asset_key      text NOT NULL,
    partition_key  text NOT NULL DEFAULT '',
    run_id         text NOT NULL,
    stored_at      timestamptz NOT NULL DEFAULT now(),
    format         text NOT NULL DEFAULT 'parquet',
    payload        bytea NOT NULL,
    PRIMARY KEY (asset_key, partition_key)
);
