-- The recorded history the policy replay folds (ReplayStore.history, core.replay.ReplayHistory):
-- every cycle that started before p_until of the accounts in p_accounts (a JSON list; null or
-- empty: every account) with its heartbeat checks, diff findings, watchdog verdicts and backfill
-- candidates (each with the operator's latest review of its pair made before the decision), the
-- trading gate's changes and the quarantines operators ended. One statement, one snapshot.
CREATE OR REPLACE FUNCTION public.recon_policy_replay_history(p_until timestamptz,
                                                              p_accounts jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    WITH cyc AS (
        SELECT c.cycle_id, c.exchange_account, c.started_at, c.status, c.error
        FROM recon.cycles c
        WHERE (p_until IS NULL OR c.started_at < p_until)
          AND (p_accounts IS NULL OR pg_catalog.jsonb_array_length(p_accounts) = 0
               OR p_accounts ? c.exchange_account)
    )
    SELECT pg_catalog.jsonb_build_object(
        'cycles', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(c)
                                                        ORDER BY c.started_at, c.cycle_id)
                            FROM cyc c), '[]'::jsonb),
        'checks', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'cycle_id', k.cycle_id, 'exchange_account', k.exchange_account,
                       'profile_id', k.profile_id, 'trade_id', k.trade_id,
                       'slice_no', k.slice_no, 'symbol', k.symbol, 'ghost', k.ghost,
                       'attributable', k.attributable, 'mark_price', k.mark_price::float8,
                       'mismatch_notional_usd', k.mismatch_notional_usd::float8,
                       'streak', k.streak, 'streak_started_cycle', k.streak_started_cycle,
                       'confirmations_required', k.confirmations_required,
                       'decision', k.decision, 'dry_run', k.dry_run, 'side', k.side,
                       'hold_reason', k.hold_reason, 'clear_streak', k.clear_streak)
                       ORDER BY k.id)
            FROM recon.parity_checks k
            JOIN cyc c ON c.cycle_id = k.cycle_id AND c.exchange_account = k.exchange_account),
            '[]'::jsonb),
        'mismatches', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'cycle_id', m.cycle_id, 'exchange_account', m.exchange_account,
                       'kind', m.kind, 'profile_id', m.profile_id, 'symbol', m.symbol,
                       'notional_usd', m.notional_usd::float8, 'details', m.details)
                       ORDER BY m.id)
            FROM recon.mismatches m
            JOIN cyc c ON c.cycle_id = m.cycle_id AND c.exchange_account = m.exchange_account),
            '[]'::jsonb),
        'verdicts', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'cycle_id', w.cycle_id, 'exchange_account', w.exchange_account,
                       'profile_id', w.profile_id,
                       'allocated_capital_usd', w.allocated_capital_usd::float8,
                       'mismatch_notional_usd', w.mismatch_notional_usd::float8,
                       'threshold_pct', w.threshold_pct::float8, 'tripped', w.tripped,
                       'clean', w.clean, 'findings', w.findings, 'checked_at', w.checked_at,
                       'not_fully_checked', w.not_fully_checked,
                       'evidence_legs', w.evidence_legs, 'systemic', w.systemic,
                       'unrecorded_fills_usd', w.unrecorded_fills_usd::float8)
                       ORDER BY w.id)
            FROM recon.watchdog_checks w
            JOIN cyc c ON c.cycle_id = w.cycle_id AND c.exchange_account = w.exchange_account),
            '[]'::jsonb),
        'backfill', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'cycle_id', d.cycle_id, 'exchange_account', d.exchange_account,
                       'symbol', d.symbol, 'exchange_fill_id', d.exchange_fill_id,
                       'profile_id', d.profile_id, 'trade_id', d.trade_id,
                       'slice_no', d.slice_no, 'decision', d.decision,
                       'match_mode', d.match_mode, 'assignable', d.assignable,
                       'reason', d.reason, 'dry_run', d.dry_run,
                       'fill_qty', d.fill_qty::float8, 'fill_price', d.fill_price::float8,
                       'review_verdict', r.verdict, 'review_id', r.id, 'review_note', r.note)
                       ORDER BY d.id)
            FROM recon.backfill_decisions d
            JOIN cyc c ON c.cycle_id = d.cycle_id AND c.exchange_account = d.exchange_account
            LEFT JOIN LATERAL (
                SELECT v.id, v.verdict, v.note FROM recon.backfill_reviews v
                WHERE v.exchange_account = d.exchange_account AND v.symbol = d.symbol
                  AND v.exchange_fill_id = d.exchange_fill_id AND v.profile_id = d.profile_id
                  AND v.trade_id = d.trade_id AND v.slice_no = d.slice_no
                  AND v.reviewed_at <= d.created_at
                ORDER BY v.reviewed_at DESC, v.id DESC LIMIT 1) r ON true),
            '[]'::jsonb),
        'gate_events', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'profile_id', e.profile_id, 'exchange_account', p.exchange_account,
                       'action', e.action, 'previous_state', e.previous_state,
                       'previous_pause_source', e.previous_pause_source,
                       'trading_state', e.trading_state, 'pause_source', e.pause_source,
                       'cycle_id', e.cycle_id, 'at', e.at) ORDER BY e.at, e.id)
            FROM recon.trading_gate_events e JOIN public.profiles p ON p.id = e.profile_id
            WHERE (p_until IS NULL OR e.at < p_until)
              AND (p_accounts IS NULL OR pg_catalog.jsonb_array_length(p_accounts) = 0
                   OR p_accounts ? p.exchange_account)), '[]'::jsonb),
        'operator_releases', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'profile_id', q.profile_id, 'trade_id', q.trade_id,
                       'slice_no', q.slice_no, 'released_at', q.released_at)
                       ORDER BY q.released_at)
            FROM recon.quarantine q
            WHERE q.released_by LIKE 'operator:%'
              AND (p_until IS NULL OR q.released_at < p_until)), '[]'::jsonb));
$$;
