-- The EXIT backfill (issue 13): one decision per candidate exit fill per cycle, the operators'
-- calls on them, and the trade id hints that attribute a foreign order to a trade.

-- recon.backfill_decisions (0002) had no writer until now: it becomes one row per candidate fill
-- and cycle, with the fill's evidence, the slice it is (or would be) assigned to, the method and
-- the decision. A fill that singles out no slice has no profile, trade or slice.
ALTER TABLE recon.backfill_decisions ALTER COLUMN profile_id DROP NOT NULL;
ALTER TABLE recon.backfill_decisions ALTER COLUMN trade_id DROP NOT NULL;
ALTER TABLE recon.backfill_decisions ALTER COLUMN slice_no DROP NOT NULL;
ALTER TABLE recon.backfill_decisions ALTER COLUMN slice_no DROP DEFAULT;
ALTER TABLE recon.backfill_decisions DROP COLUMN exchange_fill_ids;
ALTER TABLE recon.backfill_decisions
    ADD COLUMN exchange_account  text NOT NULL DEFAULT '',
    ADD COLUMN symbol            text NOT NULL DEFAULT '',
    ADD COLUMN exchange_fill_id  text NOT NULL DEFAULT '',
    ADD COLUMN exchange_order_id text,
    ADD COLUMN client_order_id   text,
    ADD COLUMN fill_side         text CHECK (fill_side IN ('buy', 'sell')),
    ADD COLUMN fill_qty          numeric,
    ADD COLUMN fill_price        numeric,
    ADD COLUMN fee_usd           numeric,
    ADD COLUMN filled_at         timestamptz,
    ADD COLUMN slice_side        text,
    ADD COLUMN slice_open_qty    numeric,
    ADD COLUMN slice_opened_at   timestamptz,
    ADD COLUMN candidate_slices  jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN strong            boolean NOT NULL DEFAULT false,
    ADD COLUMN assignable        boolean NOT NULL DEFAULT false,
    ADD COLUMN idempotency_key   text,
    ADD COLUMN dry_run           boolean NOT NULL DEFAULT false;
ALTER TABLE recon.backfill_decisions ADD CONSTRAINT backfill_decisions_match_mode_check
    CHECK (match_mode IN ('client_order_id', 'sub_tag', 'trade_id_hint', 'single_open_trade',
                          'qty_unique'));
-- A decision that names a slice names all of it.
ALTER TABLE recon.backfill_decisions ADD CONSTRAINT backfill_decisions_slice_check
    CHECK ((profile_id IS NULL) = (trade_id IS NULL) AND (trade_id IS NULL) = (slice_no IS NULL));
ALTER TABLE recon.backfill_decisions ADD CONSTRAINT backfill_decisions_go_check
    CHECK (decision <> 'GO' OR (trade_id IS NOT NULL AND idempotency_key IS NOT NULL));
CREATE UNIQUE INDEX IF NOT EXISTS backfill_decisions_fill_uq
    ON recon.backfill_decisions (cycle_id, exchange_account, symbol, exchange_fill_id)
    WHERE exchange_fill_id <> '';
CREATE INDEX IF NOT EXISTS backfill_decisions_profile_idx
    ON recon.backfill_decisions (profile_id, cycle_id, decision);

-- An operator's call on a candidate (append-only: the trigger is in recon.forbid_change.sql):
-- the approve_backfill / reject_backfill jobs. The pair (fill, slice) it names is what later
-- cycles honour.
CREATE TABLE IF NOT EXISTS recon.backfill_reviews (
    id                bigserial PRIMARY KEY,
    decision_id       bigint NOT NULL REFERENCES recon.backfill_decisions (id),
    verdict           text NOT NULL CHECK (verdict IN ('approve', 'reject')),
    note              text NOT NULL CHECK (note <> ''),
    exchange_account  text NOT NULL,
    symbol            text NOT NULL,
    exchange_fill_id  text NOT NULL,
    profile_id        text NOT NULL,
    trade_id          text NOT NULL,
    slice_no          integer NOT NULL,
    run_id            text NOT NULL,
    reviewed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS backfill_reviews_pair_idx
    ON recon.backfill_reviews (exchange_account, symbol, exchange_fill_id);

-- Trade id hints: "the fills of this exchange order belong to this trade", written by the
-- trading app (e.g. a close from its own UI that the exchange tags with a foreign id) or by an
-- operator, through public.recon_add_exit_fill_hint.
CREATE TABLE IF NOT EXISTS recon.exit_fill_hints (
    id                 bigserial PRIMARY KEY,
    exchange_account   text NOT NULL,
    exchange_order_id  text NOT NULL,
    profile_id         text NOT NULL REFERENCES public.profiles (id),
    trade_id           text NOT NULL,
    note               text NOT NULL CHECK (note <> ''),
    added_by           text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (exchange_account, exchange_order_id)
);

DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        GRANT SELECT, INSERT ON recon.backfill_decisions, recon.backfill_reviews,
                                recon.exit_fill_hints TO service_role;
        GRANT USAGE ON SEQUENCE recon.backfill_decisions_id_seq, recon.backfill_reviews_id_seq,
                                recon.exit_fill_hints_id_seq TO service_role;
    END IF;
END
$grants$;
