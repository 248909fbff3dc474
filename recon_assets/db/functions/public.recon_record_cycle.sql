-- Recording a reconciliation cycle, callable through psycopg and through supabase-py's rpc()
-- (as their owner: the Data API's service_role needs no grant on recon.cycles / mismatches):
--   public.recon_record_cycle(...)          a succeeded cycle and its findings
--   public.recon_record_failed_cycle(...)   a failed one

-- A succeeded cycle and its findings, in one transaction. Recording the same cycle twice (a
-- retried step) adds nothing the second time: mismatches are append-only history.
-- p_db_read_at / p_exchange_read_at and p_db_run_id / p_exchange_run_id: the evidence the diff
-- was made from (when each side was read, by which run); corrections judge its age by them.
-- p_not_fully_checked: profile -> why a finding about it was held back by the recency guard
-- (the watchdog does not call such a profile's cycle clean).
DROP FUNCTION IF EXISTS public.recon_record_cycle(text, text, timestamptz, jsonb);
DROP FUNCTION IF EXISTS public.recon_record_cycle(text, text, timestamptz, jsonb, timestamptz,
                                                  timestamptz, text, text);

CREATE OR REPLACE FUNCTION public.recon_record_cycle(
    p_cycle_id text, p_account text, p_started_at timestamptz, p_mismatches jsonb,
    p_db_read_at timestamptz DEFAULT NULL, p_exchange_read_at timestamptz DEFAULT NULL,
    p_db_run_id text DEFAULT NULL, p_exchange_run_id text DEFAULT NULL,
    p_not_fully_checked jsonb DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    INSERT INTO recon.cycles (cycle_id, exchange_account, started_at, finished_at, status,
                              mismatch_count, db_read_at, exchange_read_at, db_run_id,
                              exchange_run_id, not_fully_checked)
    VALUES (p_cycle_id, p_account, p_started_at, clock_timestamp(), 'succeeded',
            jsonb_array_length(p_mismatches), p_db_read_at, p_exchange_read_at, p_db_run_id,
            p_exchange_run_id, COALESCE(p_not_fully_checked, '{}'::jsonb))
    ON CONFLICT (cycle_id, exchange_account) DO UPDATE
        SET status = 'succeeded', finished_at = EXCLUDED.finished_at,
            mismatch_count = EXCLUDED.mismatch_count, error = NULL,
            db_read_at = EXCLUDED.db_read_at, exchange_read_at = EXCLUDED.exchange_read_at,
            db_run_id = EXCLUDED.db_run_id, exchange_run_id = EXCLUDED.exchange_run_id,
            not_fully_checked = EXCLUDED.not_fully_checked
        WHERE recon.cycles.status <> 'succeeded';
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    INSERT INTO recon.mismatches (
        cycle_id, kind, profile_id, exchange_account, symbol, client_order_id, exchange_order_id,
        trade_id, attributable, db_qty, exchange_qty, db_status, exchange_status, db_price,
        exchange_price, notional_usd, details)
    SELECT p_cycle_id, m.kind, m.profile_id, p_account, m.symbol, m.client_order_id,
           m.exchange_order_id, m.trade_id, COALESCE(m.attributable, true), m.db_qty,
           m.exchange_qty, m.db_status, m.exchange_status, m.db_price, m.exchange_price,
           COALESCE(m.notional_usd, 0), COALESCE(m.details, '{}'::jsonb)
    FROM jsonb_to_recordset(p_mismatches) AS m(
        kind text, profile_id text, symbol text, client_order_id text, exchange_order_id text,
        trade_id text, attributable boolean, db_qty numeric, exchange_qty numeric,
        db_status text, exchange_status text, db_price numeric, exchange_price numeric,
        notional_usd numeric, details jsonb);
    RETURN jsonb_array_length(p_mismatches);
END;
$$;

-- A cycle that failed before its findings could be trusted. Never overrides a success.
CREATE OR REPLACE FUNCTION public.recon_record_failed_cycle(
    p_cycle_id text, p_account text, p_error text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    INSERT INTO recon.cycles (cycle_id, exchange_account, finished_at, status, error)
    VALUES (p_cycle_id, p_account, clock_timestamp(), 'failed', left(p_error, 2000))
    ON CONFLICT (cycle_id, exchange_account) DO UPDATE
        SET status = 'failed', finished_at = EXCLUDED.finished_at, error = EXCLUDED.error
        WHERE recon.cycles.status = 'running';
$$;
