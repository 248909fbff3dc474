-- The parity heartbeat's checks of one cycle of one account, in one transaction:
--   * appends them to recon.parity_checks with the run (attempt) that recorded them (a retried
--     step records nothing twice);
--   * keeps recon.parity_confirmations equal to the streaks: a ghost row's streak is stored, any
--     other slice of the account (cleared, ambiguous, held, or no longer open) loses its streak;
--   * opens a quarantine for a `quarantine` decision (not in dry run), with the check as its
--     evidence; keeps an open quarantine's run of supported cycles (clear_streak); releases it
--     when the slice is `cleared` (core.parity decides that only after the confirmation count of
--     supported cycles in a row) or is no longer open.
-- Returns {"recorded": n, "quarantined": n, "released": [{profile_id, trade_id, slice_no,
-- resolution, why}], "already_recorded": bool, "run_id": the attempt that recorded them}.
DROP FUNCTION IF EXISTS public.recon_record_parity_checks(text, text, jsonb, boolean);

CREATE OR REPLACE FUNCTION public.recon_record_parity_checks(
    p_cycle_id text, p_account text, p_checks jsonb, p_dry_run boolean DEFAULT false,
    p_run_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_recorded integer;
    v_quarantined integer := 0;
    v_released jsonb := '[]'::jsonb;
BEGIN
    IF EXISTS (SELECT 1 FROM recon.parity_checks
               WHERE cycle_id = p_cycle_id AND exchange_account = p_account) THEN
        RETURN pg_catalog.jsonb_build_object(
            'recorded', 0, 'quarantined', 0, 'released', '[]'::jsonb, 'already_recorded', true,
            'run_id', (SELECT c.run_id FROM recon.parity_checks c
                        WHERE c.cycle_id = p_cycle_id AND c.exchange_account = p_account
                        ORDER BY c.id LIMIT 1));
    END IF;
    DROP TABLE IF EXISTS pg_temp.recon_checks;
    CREATE TEMPORARY TABLE recon_checks ON COMMIT DROP AS
    SELECT * FROM pg_catalog.jsonb_to_recordset(COALESCE(p_checks, '[]'::jsonb)) AS c(
        profile_id text, trade_id text, slice_no integer, symbol text, side text,
        virtual_open_qty numeric, exchange_qty numeric, slices_qty numeric, min_qty_step numeric,
        mark_price numeric, price_source text, mismatch_notional_usd numeric, attributable boolean,
        attribution text, ghost boolean, ghost_reason text, streak integer,
        confirmations_required integer, streak_started_cycle text, decision text, reason text,
        idempotency_key text, hold_reason text, clear_streak integer, clear_started_cycle text);

    INSERT INTO recon.parity_checks (
        cycle_id, exchange_account, profile_id, trade_id, slice_no, symbol, side,
        virtual_open_qty, exchange_qty, slices_qty, min_qty_step, mark_price, price_source,
        mismatch_notional_usd, attributable, attribution, ghost, ghost_reason, streak,
        confirmations_required, streak_started_cycle, decision, reason, idempotency_key, dry_run,
        hold_reason, clear_streak, clear_started_cycle, run_id)
    SELECT p_cycle_id, p_account, c.profile_id, c.trade_id, c.slice_no, c.symbol, c.side,
           c.virtual_open_qty, c.exchange_qty, c.slices_qty, c.min_qty_step, c.mark_price,
           c.price_source, COALESCE(c.mismatch_notional_usd, 0), c.attributable, c.attribution,
           c.ghost, c.ghost_reason, COALESCE(c.streak, 0), c.confirmations_required,
           c.streak_started_cycle, c.decision, c.reason, c.idempotency_key, COALESCE(p_dry_run, false),
           c.hold_reason, COALESCE(c.clear_streak, 0), c.clear_started_cycle, p_run_id
    FROM pg_temp.recon_checks c;
    GET DIAGNOSTICS v_recorded = ROW_COUNT;

    -- Streaks: exactly the ghost rows of this cycle.
    DELETE FROM recon.parity_confirmations f
     USING public.profiles p
     WHERE p.id = f.profile_id AND p.exchange_account = p_account
       AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_checks c
                       WHERE c.profile_id = f.profile_id AND c.trade_id = f.trade_id
                         AND c.slice_no = f.slice_no AND c.ghost AND c.streak > 0);
    INSERT INTO recon.parity_confirmations (profile_id, trade_id, slice_no, exchange_account,
                                            consecutive_count, first_seen_cycle, last_seen_cycle,
                                            last_seen_at)
    SELECT c.profile_id, c.trade_id, c.slice_no, p_account, c.streak,
           COALESCE(c.streak_started_cycle, p_cycle_id), p_cycle_id, pg_catalog.now()
    FROM pg_temp.recon_checks c WHERE c.ghost AND c.streak > 0
    ON CONFLICT (profile_id, trade_id, slice_no) DO UPDATE
        SET consecutive_count = EXCLUDED.consecutive_count,
            first_seen_cycle = EXCLUDED.first_seen_cycle,
            last_seen_cycle = EXCLUDED.last_seen_cycle, last_seen_at = EXCLUDED.last_seen_at,
            exchange_account = EXCLUDED.exchange_account;

    IF NOT COALESCE(p_dry_run, false) THEN
        INSERT INTO recon.quarantine (profile_id, trade_id, slice_no, reason, cycle_id,
                                      exchange_account, evidence)
        SELECT c.profile_id, c.trade_id, c.slice_no, c.reason, p_cycle_id, p_account,
               pg_catalog.to_jsonb(c)
        FROM pg_temp.recon_checks c WHERE c.decision = 'quarantine'
        ON CONFLICT (profile_id, trade_id, slice_no) WHERE released_at IS NULL DO NOTHING;
        GET DIAGNOSTICS v_quarantined = ROW_COUNT;
        -- An open quarantine's run of supported cycles, as the heartbeat counted it.
        UPDATE recon.quarantine q
           SET clear_count = c.clear_streak, clear_started_cycle = c.clear_started_cycle,
               clear_last_cycle = CASE WHEN c.clear_streak > 0 THEN p_cycle_id END
          FROM pg_temp.recon_checks c
         WHERE c.profile_id = q.profile_id AND c.trade_id = q.trade_id
           AND c.slice_no = q.slice_no AND q.released_at IS NULL;
        -- Released when the slice is cleared (supported for the confirmation count in a row),
        -- or is no longer open.
        WITH released AS (
            UPDATE recon.quarantine q
               SET released_at = pg_catalog.now(),
                   released_by = 'parity_heartbeat:' || p_cycle_id,
                   resolution = CASE WHEN EXISTS (
                                     SELECT 1 FROM pg_temp.recon_checks c
                                     WHERE c.profile_id = q.profile_id AND c.trade_id = q.trade_id
                                       AND c.slice_no = q.slice_no) THEN 'cleared'
                                ELSE 'slice_closed' END
              FROM public.profiles p
             WHERE p.id = q.profile_id AND p.exchange_account = p_account
               AND q.released_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM pg_temp.recon_checks c
                               WHERE c.profile_id = q.profile_id AND c.trade_id = q.trade_id
                                 AND c.slice_no = q.slice_no AND c.decision <> 'cleared')
            RETURNING q.profile_id, q.trade_id, q.slice_no, q.resolution, q.clear_count
        )
        SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                   'profile_id', r.profile_id, 'trade_id', r.trade_id, 'slice_no', r.slice_no,
                   'resolution', r.resolution,
                   'why', CASE r.resolution
                            WHEN 'cleared' THEN pg_catalog.format(
                                'the exchange supported the slice %s consecutive cycles',
                                r.clear_count)
                            ELSE 'the slice is no longer open' END)
                   ORDER BY r.profile_id, r.trade_id, r.slice_no), '[]'::jsonb)
          INTO v_released FROM released r;
    END IF;
    RETURN pg_catalog.jsonb_build_object('recorded', v_recorded, 'quarantined', v_quarantined,
                                         'released', v_released, 'already_recorded', false,
                                         'run_id', p_run_id);
END;
$$;

-- An operator ends a slice's open quarantine (the resolve_quarantine job): `release` (the
-- heartbeat looks at it afresh; if it is still an unattributed ghost it is quarantined again) or
-- `approve_synthetic_exit` (the operator attributes the slice: the heartbeat may close it once
-- confirmed). Recorded with who (the run), the resolution and the note.
CREATE OR REPLACE FUNCTION public.recon_resolve_quarantine(
    p_profile_id text, p_trade_id text, p_slice_no integer, p_resolution text, p_note text,
    p_operator_run text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    q recon.quarantine%ROWTYPE;
BEGIN
    IF p_resolution IS NULL OR p_resolution NOT IN ('release', 'approve_synthetic_exit') THEN
        RAISE EXCEPTION 'recon_resolve_quarantine: resolution must be release or approve_synthetic_exit, not %',
            COALESCE(p_resolution, 'none');
    END IF;
    IF COALESCE(p_note, '') = '' THEN
        RAISE EXCEPTION 'recon_resolve_quarantine: a note saying why is required';
    END IF;
    PERFORM recon._require_operator_request('recon_resolve_quarantine', p_operator_run,
                                            ARRAY['resolve_quarantine']);
    PERFORM recon._lock_profile(p_profile_id);
    UPDATE recon.quarantine
       SET released_at = pg_catalog.now(), released_by = 'operator:' || COALESCE(p_operator_run, '?'),
           resolution = p_resolution, note = p_note
     WHERE profile_id = p_profile_id AND trade_id = p_trade_id AND slice_no = p_slice_no
       AND released_at IS NULL
    RETURNING * INTO q;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recon_resolve_quarantine: slice % of trade % (profile %) is not quarantined',
            p_slice_no, p_trade_id, p_profile_id;
    END IF;
    RETURN pg_catalog.to_jsonb(q);
END;
$$;
