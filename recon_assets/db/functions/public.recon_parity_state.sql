-- What the parity heartbeat decides from besides the snapshots, for one account and cycle, as
-- one JSON object of four lists of slices (profile_id, trade_id, slice_no): "streaks" (with
-- consecutive_count, first_seen_cycle, last_seen_cycle), "quarantined" (an open quarantine),
-- "approved" (an operator approved a synthetic exit) and "backfill_go" (the EXIT backfill has a
-- GO decision in this cycle). Read in one statement (ReconStore.parity_state).
CREATE OR REPLACE FUNCTION public.recon_parity_state(p_account text, p_cycle_id text)
RETURNS jsonb
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT jsonb_build_object(
        'streaks', COALESCE((
            SELECT jsonb_agg(jsonb_build_object(
                       'profile_id', f.profile_id, 'trade_id', f.trade_id, 'slice_no', f.slice_no,
                       'consecutive_count', f.consecutive_count,
                       'first_seen_cycle', f.first_seen_cycle, 'last_seen_cycle', f.last_seen_cycle))
            FROM recon.parity_confirmations f JOIN public.profiles p ON p.id = f.profile_id
            WHERE p.exchange_account = p_account), '[]'::jsonb),
        'quarantined', COALESCE((
            SELECT jsonb_agg(jsonb_build_object(
                       'profile_id', q.profile_id, 'trade_id', q.trade_id, 'slice_no', q.slice_no))
            FROM recon.quarantine q JOIN public.profiles p ON p.id = q.profile_id
            WHERE p.exchange_account = p_account AND q.released_at IS NULL), '[]'::jsonb),
        'approved', COALESCE((
            SELECT jsonb_agg(DISTINCT jsonb_build_object(
                       'profile_id', q.profile_id, 'trade_id', q.trade_id, 'slice_no', q.slice_no))
            FROM recon.quarantine q JOIN public.profiles p ON p.id = q.profile_id
            WHERE p.exchange_account = p_account
              AND q.resolution = 'approve_synthetic_exit'), '[]'::jsonb),
        'backfill_go', COALESCE((
            SELECT jsonb_agg(DISTINCT jsonb_build_object(
                       'profile_id', d.profile_id, 'trade_id', d.trade_id, 'slice_no', d.slice_no))
            FROM recon.backfill_decisions d
            WHERE d.cycle_id = p_cycle_id AND d.decision = 'GO'), '[]'::jsonb));
$$;
