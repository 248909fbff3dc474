-- The reconciling gate of a profile, owned by one run:
--   public.recon_begin_reconciling(p_profile_id, p_cycle_id, p_take_over_from)
--   public.recon_end_reconciling(p_profile_id, p_cycle_id)
--
-- While a profile is corrected its trading_state is 'reconciling' (the trading app starts no new
-- ENTRY/EXIT flow), and 'active' again afterwards. A paused profile stays paused: begin does not
-- touch it and end only restores 'reconciling'; a pause set during reconciliation wins.
--
-- The session (recon.reconciling: owner run = cycle_id, started_at) has one owner. begin by
-- another run while an owner holds it returns {"status": "busy", "owner", "since"} and changes
-- nothing: a second run can neither correct under the gate nor end it early. Only the owner's
-- end restores trading; a run takes the session over only by naming the owner it replaces
-- (p_take_over_from), which it does after it found that owner dead (its Dagster run no longer
-- running) or older than a bound; the next cycle of the account restores a stale session the
-- same way (end with the dead owner's id). end(p) without a cycle id restores unconditionally
-- (an operator). Both functions are idempotent.
DROP FUNCTION IF EXISTS public.recon_begin_reconciling(text, text);

CREATE OR REPLACE FUNCTION public.recon_begin_reconciling(
    p_profile_id text, p_cycle_id text DEFAULT NULL, p_take_over_from text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_state text;
    v_new text;
    v_owner text;
    v_since timestamptz;
    v_has_session boolean := false;
BEGIN
    PERFORM recon._lock_profile(p_profile_id);
    SELECT trading_state INTO v_state FROM public.profiles WHERE id = p_profile_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recon_begin_reconciling: unknown profile %', p_profile_id;
    END IF;
    SELECT cycle_id, started_at, true INTO v_owner, v_since, v_has_session
      FROM recon.reconciling WHERE profile_id = p_profile_id FOR UPDATE;
    IF v_has_session AND v_owner IS DISTINCT FROM p_cycle_id
       AND v_owner IS DISTINCT FROM p_take_over_from THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'busy', 'profile_id', p_profile_id, 'trading_state', v_state,
            'owner', v_owner, 'since', v_since, 'cycle_id', p_cycle_id, 'took_over', false);
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
    RETURN pg_catalog.jsonb_build_object(
        'status', CASE WHEN v_has_session AND v_owner IS DISTINCT FROM p_cycle_id
                       THEN 'took_over' ELSE 'began' END,
        'profile_id', p_profile_id, 'previous_state', v_state, 'trading_state', v_new,
        'cycle_id', p_cycle_id,
        'took_over', v_has_session AND v_owner IS DISTINCT FROM p_cycle_id,
        'previous_owner', v_owner);
END;
$$;

CREATE OR REPLACE FUNCTION public.recon_end_reconciling(p_profile_id text, p_cycle_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
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
            'reason', 'the session is owned by cycle ' || COALESCE(v_owner, '(none)'));
    END IF;
    DELETE FROM recon.reconciling WHERE profile_id = p_profile_id;
    IF v_state = 'reconciling' THEN
        UPDATE public.profiles SET trading_state = 'active', updated_at = pg_catalog.now()
         WHERE id = p_profile_id;
        RETURN pg_catalog.jsonb_build_object('profile_id', p_profile_id, 'trading_state', 'active',
                                             'restored', true, 'owner', v_owner);
    END IF;
    RETURN pg_catalog.jsonb_build_object('profile_id', p_profile_id, 'trading_state', v_state,
                                         'restored', false);
END;
$$;
