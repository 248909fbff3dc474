-- The integrity watchdog's verdicts of one cycle of one account, in one transaction:
--   * appends one row per profile to recon.watchdog_checks (a retried step records nothing
--     twice: the second call returns already_recorded and changes nothing);
--   * pauses each profile that tripped (pause source 'parity_watchdog'), under its lock, unless
--     it is paused already: an operator's or the trading app's pause keeps its source (and so is
--     never auto-resumed), a watchdog pause keeps the moment it began;
--   * keeps the last verdict on recon.watchdog_state.
-- The verdicts are core.watchdog's (VERDICT_COLUMNS); the rule is there, not here.
--   * keeps on recon.cycles the position drift no profile could be charged with
--     (p_uncharged: core.watchdog UNCHARGED_COLUMNS rows).
-- Returns {"recorded": n, "paused": [profile ids paused now], "already_recorded": bool}.
DROP FUNCTION IF EXISTS public.recon_record_watchdog(text, text, jsonb, text);

CREATE OR REPLACE FUNCTION public.recon_record_watchdog(
    p_cycle_id text, p_account text, p_verdicts jsonb, p_run_id text DEFAULT NULL,
    p_uncharged jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    vd record;
    prof public.profiles%ROWTYPE;
    v_recorded integer;
    v_paused text[] := ARRAY[]::text[];
BEGIN
    IF EXISTS (SELECT 1 FROM recon.watchdog_checks
               WHERE cycle_id = p_cycle_id AND exchange_account = p_account) THEN
        RETURN pg_catalog.jsonb_build_object('recorded', 0, 'paused', '[]'::jsonb,
                                             'already_recorded', true);
    END IF;
    DROP TABLE IF EXISTS pg_temp.recon_verdicts;
    CREATE TEMPORARY TABLE recon_verdicts ON COMMIT DROP AS
    SELECT * FROM pg_catalog.jsonb_to_recordset(COALESCE(p_verdicts, '[]'::jsonb)) AS v(
        profile_id text, allocated_capital_usd numeric, ghost_notional_usd numeric,
        order_notional_usd numeric, position_notional_usd numeric, mismatch_notional_usd numeric,
        threshold_pct numeric, threshold_usd numeric, findings integer, tripped boolean,
        clean boolean, reason text, not_fully_checked text, evidence_legs jsonb, systemic text,
        unrecorded_fills_usd numeric);

    INSERT INTO recon.watchdog_checks (
        cycle_id, exchange_account, profile_id, allocated_capital_usd, ghost_notional_usd,
        order_notional_usd, position_notional_usd, mismatch_notional_usd, threshold_pct,
        threshold_usd, findings, tripped, clean, reason, not_fully_checked, evidence_legs,
        systemic, unrecorded_fills_usd)
    SELECT p_cycle_id, p_account, v.profile_id, v.allocated_capital_usd,
           COALESCE(v.ghost_notional_usd, 0), COALESCE(v.order_notional_usd, 0),
           COALESCE(v.position_notional_usd, 0), v.mismatch_notional_usd, v.threshold_pct,
           v.threshold_usd, COALESCE(v.findings, 0), v.tripped, v.clean, v.reason,
           v.not_fully_checked, COALESCE(v.evidence_legs, '[]'::jsonb), v.systemic,
           COALESCE(v.unrecorded_fills_usd, 0)
    FROM pg_temp.recon_verdicts v ORDER BY v.profile_id;
    GET DIAGNOSTICS v_recorded = ROW_COUNT;
    UPDATE recon.cycles
       SET uncharged_drift = COALESCE(p_uncharged, '[]'::jsonb),
           uncharged_drift_usd = COALESCE((
               SELECT pg_catalog.sum((u->>'notional_usd')::numeric)
               FROM pg_catalog.jsonb_array_elements(COALESCE(p_uncharged, '[]'::jsonb)) u), 0)
     WHERE cycle_id = p_cycle_id AND exchange_account = p_account;

    FOR vd IN SELECT * FROM pg_temp.recon_verdicts ORDER BY profile_id LOOP
        IF vd.tripped THEN
            prof := recon._lock_profile_row(vd.profile_id, 'recon_record_watchdog');
            IF prof.trading_state <> 'paused' THEN
                PERFORM recon._change_trading_gate(
                    prof, 'watchdog_pause', true, 'parity_watchdog', vd.reason, p_cycle_id,
                    p_run_id, pg_catalog.to_jsonb(vd));
                v_paused := v_paused || vd.profile_id;
            END IF;
        END IF;
        INSERT INTO recon.watchdog_state (profile_id, exchange_account, last_cycle_id,
                                          last_tripped_cycle_id, mismatch_notional_usd,
                                          threshold_usd, allocated_capital_usd, threshold_pct,
                                          updated_at)
        VALUES (vd.profile_id, p_account, p_cycle_id, CASE WHEN vd.tripped THEN p_cycle_id END,
                vd.mismatch_notional_usd, vd.threshold_usd, vd.allocated_capital_usd,
                vd.threshold_pct, pg_catalog.now())
        ON CONFLICT (profile_id) DO UPDATE
           SET exchange_account = EXCLUDED.exchange_account,
               last_cycle_id = EXCLUDED.last_cycle_id,
               last_tripped_cycle_id = COALESCE(EXCLUDED.last_tripped_cycle_id,
                                                recon.watchdog_state.last_tripped_cycle_id),
               mismatch_notional_usd = EXCLUDED.mismatch_notional_usd,
               threshold_usd = EXCLUDED.threshold_usd,
               allocated_capital_usd = EXCLUDED.allocated_capital_usd,
               threshold_pct = EXCLUDED.threshold_pct, updated_at = EXCLUDED.updated_at;
    END LOOP;
    RETURN pg_catalog.jsonb_build_object('recorded', v_recorded,
                                         'paused', pg_catalog.to_jsonb(v_paused),
                                         'already_recorded', false);
END;
$$;
