-- Record one policy replay and its events in one transaction (ReplayStore.record). A replay is
-- keyed by its run id: a retried run finds it recorded and changes nothing.
CREATE OR REPLACE FUNCTION public.recon_record_policy_replay(
    p_replay_id text, p_since timestamptz, p_until timestamptz, p_accounts jsonb,
    p_profiles jsonb, p_overrides jsonb, p_live_flags jsonb, p_replay_flags jsonb,
    p_cycles integer, p_fidelity_ok boolean, p_first_difference jsonb, p_differences integer,
    p_summary jsonb, p_events jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_events integer;
BEGIN
    INSERT INTO recon.policy_replays (replay_id, since, until, accounts, profiles, overrides,
                                      live_flags, replay_flags, cycles, fidelity_ok,
                                      first_difference, differences, summary)
    VALUES (p_replay_id, p_since, p_until, COALESCE(p_accounts, '[]'::jsonb),
            COALESCE(p_profiles, '[]'::jsonb), COALESCE(p_overrides, '{}'::jsonb),
            COALESCE(p_live_flags, '{}'::jsonb), COALESCE(p_replay_flags, '{}'::jsonb),
            p_cycles, p_fidelity_ok, p_first_difference, COALESCE(p_differences, 0),
            COALESCE(p_summary, '[]'::jsonb))
    ON CONFLICT (replay_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN pg_catalog.jsonb_build_object('replay_id', p_replay_id, 'events', 0,
                                             'already_recorded', true);
    END IF;
    INSERT INTO recon.policy_replay_events (
        replay_id, policy, exchange_account, profile_id, kind, cycle_id, at, day, trade_id,
        slice_no, symbol, notional_usd, heuristic, duration_s, live_cycle_id, cycles_from_live,
        detail)
    SELECT p_replay_id, e.policy, e.exchange_account, e.profile_id, e.kind, e.cycle_id, e.at,
           e.day, e.trade_id, e.slice_no, e.symbol, COALESCE(e.notional_usd, 0),
           COALESCE(e.heuristic, false), e.duration_s, e.live_cycle_id, e.cycles_from_live,
           COALESCE(e.detail, '')
    FROM pg_catalog.jsonb_to_recordset(COALESCE(p_events, '[]'::jsonb)) AS e(
        policy text, exchange_account text, profile_id text, kind text, cycle_id text,
        at timestamptz, day date, trade_id text, slice_no integer, symbol text,
        notional_usd numeric, heuristic boolean, duration_s double precision,
        live_cycle_id text, cycles_from_live integer, detail text);
    GET DIAGNOSTICS v_events = ROW_COUNT;
    RETURN pg_catalog.jsonb_build_object('replay_id', p_replay_id, 'events', v_events,
                                         'already_recorded', false);
END;
$$;
