-- What the parity heartbeat decides from besides the snapshots, for one account and cycle, as
-- one JSON object of lists of slices (profile_id, trade_id, slice_no) (ReconStore.parity_state):
--   "streaks"      the ghost streaks (consecutive_count, first_seen_cycle, last_seen_cycle);
--   "quarantined"  open quarantines, with their run of supported cycles (clear_count,
--                  clear_started_cycle, clear_last_cycle);
--   "approved"     an operator approved a synthetic exit, with the ghost episode (the streak's
--                  first cycle, from the quarantine's evidence) the approval was given for;
--   "backfill_go"  the EXIT backfill has a GO decision in this cycle;
--   "refusals"     lifecycle corrections refused or failed for an order of the account that the
--                  database still holds open, with no correction of that order applied since
--                  (profile_id, trade_id, client_order_id, outcome, reason): real evidence the
--                  heartbeat waits for.
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
                       'profile_id', q.profile_id, 'trade_id', q.trade_id, 'slice_no', q.slice_no,
                       'clear_count', q.clear_count, 'clear_started_cycle', q.clear_started_cycle,
                       'clear_last_cycle', q.clear_last_cycle))
            FROM recon.quarantine q JOIN public.profiles p ON p.id = q.profile_id
            WHERE p.exchange_account = p_account AND q.released_at IS NULL), '[]'::jsonb),
        'approved', COALESCE((
            SELECT jsonb_agg(DISTINCT jsonb_build_object(
                       'profile_id', q.profile_id, 'trade_id', q.trade_id, 'slice_no', q.slice_no,
                       'episode', q.evidence->>'streak_started_cycle'))
            FROM recon.quarantine q JOIN public.profiles p ON p.id = q.profile_id
            WHERE p.exchange_account = p_account
              AND q.resolution = 'approve_synthetic_exit'), '[]'::jsonb),
        'backfill_go', COALESCE((
            SELECT jsonb_agg(DISTINCT jsonb_build_object(
                       'profile_id', d.profile_id, 'trade_id', d.trade_id, 'slice_no', d.slice_no))
            FROM recon.backfill_decisions d
            WHERE d.cycle_id = p_cycle_id AND d.decision = 'GO'), '[]'::jsonb),
        'refusals', COALESCE((
            SELECT jsonb_agg(jsonb_build_object(
                       'profile_id', c.profile_id, 'trade_id', o.trade_id,
                       'client_order_id', c.client_order_id, 'outcome', c.outcome,
                       'reason', c.reason) ORDER BY c.id)
            FROM recon.corrections c
            JOIN public.orders o ON o.client_order_id = c.client_order_id
                                AND o.profile_id = c.profile_id
            JOIN public.profiles p ON p.id = c.profile_id
            WHERE p.exchange_account = p_account AND c.outcome IN ('refused', 'failed')
              AND c.handler IN ('reconcile_entry_fill', 'reconcile_exit_fill', 'reconcile_cancel')
              AND o.status = ANY (recon.open_order_statuses())
              AND NOT EXISTS (SELECT 1 FROM recon.corrections later
                              WHERE later.client_order_id = c.client_order_id
                                AND later.profile_id = c.profile_id
                                AND later.outcome = 'applied' AND later.id > c.id)), '[]'::jsonb));
$$;
