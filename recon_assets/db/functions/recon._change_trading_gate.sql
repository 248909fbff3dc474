-- The one place a profile's trading gate changes on behalf of the watchdog, the auto-resume rule
-- or an operator (the reconciling gate of a correction is public.recon_begin_reconciling.sql):
-- it writes public.profiles, appends the change to recon.trading_gate_events, and mirrors the
-- pause on recon.watchdog_state. The caller holds the profile's lock and its row lock.
--
-- Resuming restores 'reconciling' rather than 'active' while a correction's session is open
-- (recon.reconciling), so a resume never lets trading start in the middle of a correction.
CREATE OR REPLACE FUNCTION recon._change_trading_gate(
    p_profile public.profiles, p_action text, p_pause boolean, p_source text, p_reason text,
    p_cycle_id text, p_run_id text, p_evidence jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_state text;
    v_source text;
    v_paused_at timestamptz;
    v_last_resume timestamptz := p_profile.last_auto_resume_at;
BEGIN
    IF p_pause THEN
        v_state := 'paused';
        v_source := p_source;
        -- A pause over a pause keeps the moment trading stopped.
        v_paused_at := CASE WHEN p_profile.trading_state = 'paused'
                            THEN COALESCE(p_profile.paused_at, pg_catalog.now())
                            ELSE pg_catalog.now() END;
    ELSE
        v_state := CASE WHEN EXISTS (SELECT 1 FROM recon.reconciling r
                                      WHERE r.profile_id = p_profile.id)
                        THEN 'reconciling' ELSE 'active' END;
        v_source := NULL;
        v_paused_at := NULL;
        IF p_action = 'auto_resume' THEN
            v_last_resume := pg_catalog.now();
        END IF;
    END IF;
    UPDATE public.profiles
       SET trading_state = v_state, pause_source = v_source, paused_at = v_paused_at,
           last_auto_resume_at = v_last_resume, updated_at = pg_catalog.now()
     WHERE id = p_profile.id;
    INSERT INTO recon.trading_gate_events (profile_id, action, previous_state,
                                           previous_pause_source, trading_state, pause_source,
                                           reason, cycle_id, run_id, evidence)
    VALUES (p_profile.id, p_action, p_profile.trading_state, p_profile.pause_source, v_state,
            v_source, p_reason, p_cycle_id, p_run_id, COALESCE(p_evidence, '{}'::jsonb));
    INSERT INTO recon.watchdog_state (profile_id, exchange_account, triggered, pause_source,
                                      paused_at, last_auto_resume_at, updated_at)
    VALUES (p_profile.id, p_profile.exchange_account,
            COALESCE(v_source = 'parity_watchdog', false), v_source,
            v_paused_at, v_last_resume, pg_catalog.now())
    ON CONFLICT (profile_id) DO UPDATE
       SET triggered = EXCLUDED.triggered, pause_source = EXCLUDED.pause_source,
           paused_at = EXCLUDED.paused_at, last_auto_resume_at = EXCLUDED.last_auto_resume_at,
           exchange_account = EXCLUDED.exchange_account, updated_at = EXCLUDED.updated_at;
    RETURN pg_catalog.jsonb_build_object(
        'status', 'applied', 'action', p_action, 'profile_id', p_profile.id,
        'previous_state', p_profile.trading_state, 'previous_pause_source', p_profile.pause_source,
        'trading_state', v_state, 'pause_source', v_source, 'paused_at', v_paused_at,
        'last_auto_resume_at', v_last_resume);
END;
$$;

-- The profile's reconciliation lock and its row lock, and the row: what every gate change takes
-- first (`p_caller` names the function in the error for an unknown profile).
CREATE OR REPLACE FUNCTION recon._lock_profile_row(p_profile_id text, p_caller text)
RETURNS public.profiles
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    prof public.profiles%ROWTYPE;
BEGIN
    PERFORM recon._lock_profile(p_profile_id);
    SELECT * INTO prof FROM public.profiles WHERE id = p_profile_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: unknown profile %', p_caller, p_profile_id;
    END IF;
    RETURN prof;
END;
$$;
