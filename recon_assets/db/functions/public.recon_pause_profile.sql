-- A profile's trading gate, for the people and the programs around it:
--   public.recon_pause_profile(p_profile_id, p_reason, p_run_id)    an operator pauses
--   public.recon_resume_profile(p_profile_id, p_reason, p_run_id)   an operator resumes
--   public.recon_auto_resume(p_profile_id, p_cycle_id, p_run_id, p_expect_paused_at,
--                            p_expect_last_auto_resume_at, p_evidence)
--       the auto-resume rule resumes (core.watchdog decided; this only refuses when the pause
--       it judged is no longer the profile's pause)
-- (what the trading app polls: public.recon_may_trade.sql)
-- Each change is one transaction under the profile's lock, recorded in
-- recon.trading_gate_events (recon._change_trading_gate.sql). An operator's pause or resume is
-- taken only for a run that recorded its request first (recon._require_operator_request.sql).

CREATE OR REPLACE FUNCTION public.recon_pause_profile(
    p_profile_id text, p_reason text, p_run_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    prof public.profiles%ROWTYPE;
BEGIN
    IF COALESCE(pg_catalog.btrim(p_reason), '') = '' THEN
        RAISE EXCEPTION 'recon_pause_profile: a reason is required';
    END IF;
    PERFORM recon._require_operator_request('recon_pause_profile', p_run_id,
                                            ARRAY['pause_profile']);
    prof := recon._lock_profile_row(p_profile_id, 'recon_pause_profile');
    IF prof.trading_state = 'paused' AND prof.pause_source = 'operator' THEN
        RETURN pg_catalog.jsonb_build_object('status', 'unchanged', 'profile_id', p_profile_id,
                                             'trading_state', prof.trading_state,
                                             'pause_source', prof.pause_source,
                                             'paused_at', prof.paused_at);
    END IF;
    -- Over a watchdog pause too: the operator takes it over, so it is never auto-resumed.
    RETURN recon._change_trading_gate(prof, 'operator_pause', true, 'operator', p_reason, NULL,
                                      p_run_id, '{}'::jsonb);
END;
$$;

CREATE OR REPLACE FUNCTION public.recon_resume_profile(
    p_profile_id text, p_reason text, p_run_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    prof public.profiles%ROWTYPE;
BEGIN
    IF COALESCE(pg_catalog.btrim(p_reason), '') = '' THEN
        RAISE EXCEPTION 'recon_resume_profile: a reason is required';
    END IF;
    PERFORM recon._require_operator_request('recon_resume_profile', p_run_id,
                                            ARRAY['resume_profile']);
    prof := recon._lock_profile_row(p_profile_id, 'recon_resume_profile');
    IF prof.trading_state <> 'paused' THEN
        RETURN pg_catalog.jsonb_build_object('status', 'unchanged', 'profile_id', p_profile_id,
                                             'trading_state', prof.trading_state,
                                             'pause_source', prof.pause_source);
    END IF;
    RETURN recon._change_trading_gate(prof, 'operator_resume', false, NULL, p_reason, NULL,
                                      p_run_id, '{}'::jsonb);
END;
$$;

CREATE OR REPLACE FUNCTION public.recon_auto_resume(
    p_profile_id text, p_cycle_id text, p_run_id text, p_expect_paused_at timestamptz,
    p_expect_last_auto_resume_at timestamptz, p_evidence jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    prof public.profiles%ROWTYPE;
BEGIN
    prof := recon._lock_profile_row(p_profile_id, 'recon_auto_resume');
    -- Only the pause the rule judged: an operator who paused (or resumed) in the meantime, or
    -- another auto-resume, wins.
    IF prof.trading_state <> 'paused' OR prof.pause_source IS DISTINCT FROM 'parity_watchdog'
       OR prof.paused_at IS DISTINCT FROM p_expect_paused_at
       OR prof.last_auto_resume_at IS DISTINCT FROM p_expect_last_auto_resume_at THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'refused', 'reason', 'pause_changed', 'profile_id', p_profile_id,
            'trading_state', prof.trading_state, 'pause_source', prof.pause_source,
            'paused_at', prof.paused_at, 'last_auto_resume_at', prof.last_auto_resume_at);
    END IF;
    RETURN recon._change_trading_gate(
        prof, 'auto_resume', false, NULL,
        'auto-resume: every condition held (' || COALESCE(p_evidence ->> 'summary', '') || ')',
        p_cycle_id, p_run_id, p_evidence);
END;
$$;
