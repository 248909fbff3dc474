-- The reconciling gate of a profile, owned by one run:
--   public.recon_begin_reconciling(p_profile_id, p_cycle_id, p_take_over_from)
--   public.recon_end_reconciling(p_profile_id, p_cycle_id, p_restored_by)
--
-- While a profile is corrected its trading_state is 'reconciling' (the trading app starts no new
-- ENTRY/EXIT flow), and 'active' again afterwards. A paused profile stays paused: begin opens its
-- session without touching the state (so a resume in the middle of the correction restores
-- 'reconciling', recon._change_trading_gate.sql, and the owner's end then 'active') and end only
-- restores 'reconciling'; a pause set during reconciliation wins.
--
-- The session (recon.reconciling: owner run = cycle_id, started_at) has one owner. begin by
-- another run while an owner holds it returns {"status": "busy", "owner", "since"} and changes
-- nothing: a second run can neither correct under the gate nor end it early. Only the owner's
-- end restores trading; a run takes the session over only by naming the owner it replaces
-- (p_take_over_from), which it does after it found that owner dead (its Dagster run no longer
-- running) or older than a bound; the next cycle of the account restores a stale session the
-- same way (end with the owner's id, and its own run id as p_restored_by). end(p) without a
-- cycle id restores unconditionally (an operator).
--
-- An owner whose session someone else ended or took over is revoked for the profile for good
-- (recon.reconciling_revoked): the run may still be running (a session older than the bound), and
-- once its session is gone nothing else would tell its later calls apart from a run that never
-- had the gate. A revoked run's money calls are refused (recon._run_correction.sql, DETAIL
-- gate_revoked), its end restores nothing ({"restored": false, "revoked": true}) and its begin
-- returns {"status": "revoked", "revoked_by", "why", "revoked_at"} and changes nothing: it must
-- not correct from what it read before it lost the gate; the next correction run (a new run id)
-- starts from a fresh cycle. Both functions are idempotent.
DROP FUNCTION IF EXISTS public.recon_begin_reconciling(text, text);
-- end gained p_restored_by (issue item 8).
DROP FUNCTION IF EXISTS public.recon_end_reconciling(text, text);

-- Why a run lost a profile's gate, in words (the refusals and answers quote it).
CREATE OR REPLACE FUNCTION recon._gate_revocation(p_profile_id text, p_cycle_id text)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = ''
AS $$
    SELECT pg_catalog.jsonb_build_object(
        'revoked_by', v.revoked_by, 'why', v.why, 'revoked_at', v.revoked_at,
        'reason', pg_catalog.format(
            'run %s lost the reconciling gate of profile %s at %s: %s',
            v.cycle_id, v.profile_id, v.revoked_at,
            CASE WHEN v.why = 'taken_over' THEN 'run ' || v.revoked_by || ' took it over'
                 WHEN v.revoked_by IS NULL THEN 'an operator ended its session'
                 ELSE 'run ' || v.revoked_by || ' restored it as stale' END))
    FROM recon.reconciling_revoked v
    WHERE v.profile_id = p_profile_id AND v.cycle_id = p_cycle_id
    ORDER BY v.id
    LIMIT 1;
$$;

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
    v_took_over boolean;
    v_revoked jsonb;
BEGIN
    PERFORM recon._lock_profile(p_profile_id);
    SELECT trading_state INTO v_state FROM public.profiles WHERE id = p_profile_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recon_begin_reconciling: unknown profile %', p_profile_id;
    END IF;
    -- A run that lost this profile's gate never owns it again (not even by a take-over).
    v_revoked := recon._gate_revocation(p_profile_id, p_cycle_id);
    IF v_revoked IS NOT NULL THEN
        RETURN v_revoked || pg_catalog.jsonb_build_object(
            'status', 'revoked', 'profile_id', p_profile_id, 'trading_state', v_state,
            'cycle_id', p_cycle_id, 'took_over', false);
    END IF;
    SELECT cycle_id, started_at, true INTO v_owner, v_since, v_has_session
      FROM recon.reconciling WHERE profile_id = p_profile_id FOR UPDATE;
    IF v_has_session AND v_owner IS DISTINCT FROM p_cycle_id
       AND v_owner IS DISTINCT FROM p_take_over_from THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'busy', 'profile_id', p_profile_id, 'trading_state', v_state,
            'owner', v_owner, 'since', v_since, 'cycle_id', p_cycle_id, 'took_over', false);
    END IF;
    v_took_over := v_has_session AND v_owner IS DISTINCT FROM p_cycle_id;
    IF v_took_over AND v_owner IS NOT NULL THEN
        INSERT INTO recon.reconciling_revoked (profile_id, cycle_id, revoked_by, why, started_at)
        VALUES (p_profile_id, v_owner, p_cycle_id, 'taken_over', v_since);
    END IF;
    -- A paused profile gets its session too, and stays paused.
    v_new := CASE WHEN v_state = 'active' THEN 'reconciling' ELSE v_state END;
    IF v_state = 'active' THEN
        UPDATE public.profiles SET trading_state = 'reconciling', updated_at = pg_catalog.now()
         WHERE id = p_profile_id;
    END IF;
    INSERT INTO recon.reconciling (profile_id, cycle_id, started_at)
    VALUES (p_profile_id, p_cycle_id, pg_catalog.now())
    ON CONFLICT (profile_id) DO UPDATE
        SET cycle_id = EXCLUDED.cycle_id, started_at = EXCLUDED.started_at;
    RETURN pg_catalog.jsonb_build_object(
        'status', CASE WHEN v_took_over THEN 'took_over' ELSE 'began' END,
        'profile_id', p_profile_id, 'previous_state', v_state, 'trading_state', v_new,
        'cycle_id', p_cycle_id, 'took_over', v_took_over, 'previous_owner', v_owner);
END;
$$;

-- p_cycle_id: the owner whose session ends. p_restored_by: who ends it when that is not the
-- owner itself (the next cycle's run restoring a stale session); the owner is then revoked.
CREATE OR REPLACE FUNCTION public.recon_end_reconciling(
    p_profile_id text, p_cycle_id text DEFAULT NULL, p_restored_by text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_state text;
    v_owner text;
    v_since timestamptz;
    v_has_session boolean := false;
    v_by_owner boolean := p_cycle_id IS NOT NULL
                          AND (p_restored_by IS NULL OR p_restored_by = p_cycle_id);
    v_revoked jsonb;
BEGIN
    PERFORM recon._lock_profile(p_profile_id);
    SELECT trading_state INTO v_state FROM public.profiles WHERE id = p_profile_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recon_end_reconciling: unknown profile %', p_profile_id;
    END IF;
    -- A revoked owner's late end restores nothing (another run may own the gate by now).
    IF v_by_owner THEN
        v_revoked := recon._gate_revocation(p_profile_id, p_cycle_id);
        IF v_revoked IS NOT NULL THEN
            RETURN v_revoked || pg_catalog.jsonb_build_object(
                'profile_id', p_profile_id, 'trading_state', v_state, 'restored', false,
                'revoked', true);
        END IF;
    END IF;
    SELECT cycle_id, started_at, true INTO v_owner, v_since, v_has_session
      FROM recon.reconciling WHERE profile_id = p_profile_id FOR UPDATE;
    IF p_cycle_id IS NOT NULL AND v_has_session AND v_owner IS DISTINCT FROM p_cycle_id THEN
        RETURN pg_catalog.jsonb_build_object(
            'profile_id', p_profile_id, 'trading_state', v_state, 'restored', false,
            'revoked', false,
            'reason', 'the session is owned by cycle ' || COALESCE(v_owner, '(none)'));
    END IF;
    IF v_has_session AND NOT v_by_owner AND v_owner IS NOT NULL THEN
        INSERT INTO recon.reconciling_revoked (profile_id, cycle_id, revoked_by, why, started_at)
        VALUES (p_profile_id, v_owner, p_restored_by, 'restored', v_since);
    END IF;
    DELETE FROM recon.reconciling WHERE profile_id = p_profile_id;
    IF v_state = 'reconciling' THEN
        UPDATE public.profiles SET trading_state = 'active', updated_at = pg_catalog.now()
         WHERE id = p_profile_id;
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'profile_id', p_profile_id,
        'trading_state', CASE WHEN v_state = 'reconciling' THEN 'active' ELSE v_state END,
        'restored', v_state = 'reconciling', 'owner', v_owner, 'revoked', false,
        'revoked_owner', CASE WHEN v_has_session AND NOT v_by_owner THEN v_owner END);
END;
$$;
