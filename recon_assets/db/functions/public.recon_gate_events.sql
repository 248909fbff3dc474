-- The latest p_limit changes of a profile's trading gate (recon.trading_gate_events), newest
-- first (WatchdogStore.gate_events).
CREATE OR REPLACE FUNCTION public.recon_gate_events(p_profile_id text, p_limit integer DEFAULT 20)
RETURNS TABLE (id bigint, action text, previous_state text, previous_pause_source text,
               trading_state text, pause_source text, reason text, cycle_id text, run_id text,
               evidence jsonb, at timestamptz)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT e.id, e.action, e.previous_state, e.previous_pause_source, e.trading_state,
           e.pause_source, e.reason, e.cycle_id, e.run_id, e.evidence, e.at
    FROM recon.trading_gate_events e
    WHERE e.profile_id = p_profile_id
    ORDER BY e.id DESC LIMIT p_limit;
$$;
