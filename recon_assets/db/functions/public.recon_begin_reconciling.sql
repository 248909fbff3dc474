-- While a profile is corrected its trading_state is 'reconciling' (the trading app starts no new
-- ENTRY/EXIT flow), and 'active' again afterwards. A paused profile stays paused: begin does not
-- touch it and end only restores 'reconciling'; a pause set during reconciliation wins.
-- Crash between begin and end: the profile stays 'reconciling' with its row in
-- recon.reconciling (cycle id, started_at) for monitoring. Both functions are idempotent; the
-- next run for the profile calls begin (which takes the session over, recording its own cycle
-- id) and end (which restores 'active'). end(p, cycle) leaves a session another cycle took over
-- alone; end(p) without a cycle id restores unconditionally (operator, or a cycle that knows no
-- run of that profile is in progress: the Dagster run-tag limit allows one per profile).
CREATE OR REPLACE FUNCTION public.recon_begin_reconciling(p_profile_id text, p_cycle_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_state text;
    v_new text;
BEGIN
    PERFORM recon._lock_profile(p_profile_id);
    SELECT trading_state INTO v_state FROM public.profiles WHERE id = p_profile_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recon_begin_reconciling: unknown profile %', p_profile_id;
    END IF;
    v_new := v_state;
    IF v_state IN ('active', 'reconciling') THEN
        v_new := 'reconciling';
        IF v_state = 'active' THEN
            UPDATE public.profiles SET trading_state = 'reconciling', updated_at = pg_catalog.now()
             WHERE id = p_profile_id;
        END IF;
        INSERT INTO recon.reconciling (profile_id, cycle_id, started_at)
        VALUES (p_profile_id, p_cycle_id, pg_catalog.now())
        ON CONFLICT (profile_id) DO UPDATE
            SET cycle_id = EXCLUDED.cycle_id, started_at = EXCLUDED.started_at;
    END IF;
    RETURN pg_catalog.jsonb_build_object('profile_id', p_profile_id, 'previous_state', v_state,
                                         'trading_state', v_new, 'cycle_id', p_cycle_id,
                                         'took_over', v_state = 'reconciling');
END;
$$;

CREATE OR REPLACE FUNCTION public.recon_end_reconciling(p_profile_id text, p_cycle_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_state text;
    v_owner text;
    v_has_session boolean;
BEGIN
    PERFORM recon._lock_profile(p_profile_id);
    SELECT trading_state INTO v_state FROM public.profiles WHERE id = p_profile_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recon_end_reconciling: unknown profile %', p_profile_id;
    END IF;
    SELECT cycle_id, true INTO v_owner, v_has_session
      FROM recon.reconciling WHERE profile_id = p_profile_id FOR UPDATE;
    IF p_cycle_id IS NOT NULL AND v_has_session AND v_owner IS DISTINCT FROM p_cycle_id THEN
        RETURN pg_catalog.jsonb_build_object(
            'profile_id', p_profile_id, 'trading_state', v_state, 'restored', false,
            'reason', 'the session was taken over by cycle ' || COALESCE(v_owner, '(none)'));
    END IF;
    DELETE FROM recon.reconciling WHERE profile_id = p_profile_id;
    IF v_state = 'reconciling' THEN
        UPDATE public.profiles SET trading_state = 'active', updated_at = pg_catalog.now()
         WHERE id = p_profile_id;
        RETURN pg_catalog.jsonb_build_object('profile_id', p_profile_id, 'trading_state', 'active',
                                             'restored', true);
    END IF;
    RETURN pg_catalog.jsonb_build_object('profile_id', p_profile_id, 'trading_state', v_state,
                                         'restored', false);
END;
$$;
