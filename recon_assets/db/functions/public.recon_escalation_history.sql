-- What the escalation rules read (core/escalation.py), in one statement, as one JSON object of
-- row lists: "cycles" (the last p_runs cycles of status p_succeeded of each account), their
-- findings ("mismatches", with the identity columns of core.escalation.MISMATCH_IDENTITY),
-- the last day's lock contention ("contention"), failed cycles ("failed", status p_failed),
-- corrections not applied ("refused", outcome other than p_applied), and each account's latest
-- succeeded cycle with no finding at all ("clean": where its current drift episode began)
-- (ReconStore.escalation_history).
CREATE OR REPLACE FUNCTION public.recon_escalation_history(
    p_runs integer, p_succeeded text, p_failed text, p_applied text)
RETURNS jsonb
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    WITH recent AS (
        SELECT x.cycle_id, x.exchange_account, x.finished_at FROM (
            SELECT c.cycle_id, c.exchange_account, c.finished_at,
                   row_number() OVER (PARTITION BY c.exchange_account
                                      ORDER BY c.finished_at DESC) AS n
            FROM recon.cycles c WHERE c.status = p_succeeded) x
        WHERE x.n <= p_runs)
    SELECT jsonb_build_object(
        'cycles', COALESCE((SELECT jsonb_agg(to_jsonb(r)) FROM recent r), '[]'::jsonb),
        'mismatches', COALESCE((
            SELECT jsonb_agg(jsonb_build_object(
                       'cycle_id', m.cycle_id, 'kind', m.kind, 'profile_id', m.profile_id,
                       'exchange_account', m.exchange_account, 'symbol', m.symbol,
                       'client_order_id', m.client_order_id,
                       'exchange_order_id', m.exchange_order_id, 'trade_id', m.trade_id,
                       'notional_usd', m.notional_usd::float8))
            FROM recon.mismatches m WHERE m.cycle_id IN (SELECT cycle_id FROM recent)),
            '[]'::jsonb),
        'contention', COALESCE((
            SELECT jsonb_agg(jsonb_build_object(
                       'id', l.id, 'profile_id', l.profile_id, 'cycle_id', l.cycle_id,
                       'waited_ms', l.waited_ms, 'lock_kind', l.lock_kind,
                       'lock_object', l.lock_object) ORDER BY l.id)
            FROM recon.lock_contention l WHERE l.observed_at > now() - interval '1 day'),
            '[]'::jsonb),
        'refused', COALESCE((
            SELECT jsonb_agg(jsonb_build_object(
                       'id', k.id, 'cycle_id', k.cycle_id, 'profile_id', k.profile_id,
                       'handler', k.handler, 'client_order_id', k.client_order_id,
                       'outcome', k.outcome, 'reason', k.reason,
                       'error', k.evidence->>'error') ORDER BY k.id)
            FROM recon.corrections k
            WHERE k.outcome <> p_applied AND k.applied_at > now() - interval '1 day'),
            '[]'::jsonb),
        'failed', COALESCE((
            SELECT jsonb_agg(jsonb_build_object(
                       'cycle_id', c.cycle_id, 'exchange_account', c.exchange_account,
                       'error', c.error) ORDER BY c.finished_at)
            FROM recon.cycles c
            WHERE c.status = p_failed AND c.finished_at > now() - interval '1 day'),
            '[]'::jsonb),
        'clean', COALESCE((
            SELECT jsonb_agg(jsonb_build_object('exchange_account', z.exchange_account,
                                                'cycle_id', z.cycle_id))
            FROM (SELECT DISTINCT ON (c.exchange_account) c.exchange_account, c.cycle_id
                  FROM recon.cycles c
                  WHERE c.status = p_succeeded AND NOT EXISTS (
                      SELECT 1 FROM recon.mismatches m
                      WHERE m.cycle_id = c.cycle_id AND m.exchange_account = c.exchange_account)
                  ORDER BY c.exchange_account, c.finished_at DESC) z), '[]'::jsonb));
$$;
