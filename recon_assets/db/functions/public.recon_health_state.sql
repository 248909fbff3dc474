-- Everything /internal/health and /metrics report (metrics/health.py), read in one statement
-- (one snapshot, so every number of one answer comes from the same moment), as one JSON object:
--   "accounts"    per watched account: its latest finished and latest succeeded cycle, that
--                 cycle's finding counts and the parity heartbeat's ghosts
--   "global"      the database's now, open quarantines, applied synthetic exits, whether the
--                 watchdog holds any profile paused
--   "profiles"    every profile's trading gate and its watchdog state
--   "breakdown"   the latest succeeded cycles' findings per account, profile and kind
--   "alerts"      alerts per account, profile and reason
--   "cumulative"  every finding ever recorded (and of two kinds), lock contention rows
-- The statuses, kinds and sources are parameters: their one home is core/rules.py.
-- Callable through psycopg and through rpc(), so the health server runs over either backend.
CREATE OR REPLACE FUNCTION public.recon_health_state(
    p_succeeded text, p_failed text, p_missing_from_exchange text, p_missing_in_db text,
    p_synthetic_exit text, p_applied text, p_paused text, p_watchdog_source text,
    p_alert_pending text, p_alert_given_up text)
RETURNS jsonb
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
WITH prof AS (SELECT DISTINCT exchange_account FROM public.profiles),
watched AS (
    SELECT exchange_account FROM prof
    UNION
    SELECT DISTINCT exchange_account FROM recon.cycles WHERE NOT EXISTS (SELECT 1 FROM prof)
),
last_finished AS (
    SELECT DISTINCT ON (c.exchange_account) c.exchange_account, c.cycle_id, c.status,
           c.finished_at
    FROM recon.cycles c JOIN watched USING (exchange_account)
    WHERE c.status IN (p_succeeded, p_failed)
    ORDER BY c.exchange_account, c.finished_at DESC NULLS LAST, c.started_at DESC
),
last_success AS (
    SELECT DISTINCT ON (c.exchange_account) c.exchange_account, c.cycle_id, c.finished_at
    FROM recon.cycles c
    WHERE c.status = p_succeeded
    ORDER BY c.exchange_account, c.finished_at DESC NULLS LAST, c.started_at DESC
),
accounts AS (
    SELECT w.exchange_account AS account,
           lf.cycle_id AS last_cycle_id, lf.status AS last_status,
           lf.finished_at AS last_finished_at,
           ls.cycle_id AS success_cycle_id, ls.finished_at AS success_finished_at,
           EXTRACT(EPOCH FROM (now() - ls.finished_at))::float8 AS success_age_s,
           COALESCE(m.mismatches, 0) AS mismatches,
           COALESCE(m.missing_from_exchange, 0) AS missing_from_exchange,
           COALESCE(m.missing_in_db, 0) AS missing_in_db,
           COALESCE(g.ghost_trades, 0) AS ghost_trades,
           COALESCE(g.ghost_max_usd, 0)::float8 AS ghost_max_usd,
           COALESCE(g.ghost_total_usd, 0)::float8 AS ghost_total_usd,
           COALESCE(lsc.uncharged_drift_usd, 0)::float8 AS uncharged_drift_usd,
           COALESCE(lsc.uncharged_drift, '[]'::jsonb) AS uncharged_drift
    FROM watched w
    LEFT JOIN last_finished lf USING (exchange_account)
    LEFT JOIN last_success ls USING (exchange_account)
    -- The position drift that cycle could charge to no profile (account level).
    LEFT JOIN recon.cycles lsc ON lsc.cycle_id = ls.cycle_id
                              AND lsc.exchange_account = ls.exchange_account
    LEFT JOIN LATERAL (
        SELECT count(*) AS mismatches,
               count(*) FILTER (WHERE mm.kind = p_missing_from_exchange) AS missing_from_exchange,
               count(*) FILTER (WHERE mm.kind = p_missing_in_db) AS missing_in_db
        FROM recon.mismatches mm
        WHERE mm.cycle_id = ls.cycle_id AND mm.exchange_account = ls.exchange_account
    ) m ON true
    -- The parity heartbeat's ghosts of that same cycle (none while the heartbeat is off).
    LEFT JOIN LATERAL (
        SELECT count(DISTINCT (pc.profile_id, pc.trade_id)) AS ghost_trades,
               max(pc.mismatch_notional_usd) AS ghost_max_usd,
               sum(pc.mismatch_notional_usd) AS ghost_total_usd
        FROM recon.parity_checks pc
        WHERE pc.cycle_id = ls.cycle_id AND pc.exchange_account = ls.exchange_account
          AND pc.ghost
    ) g ON true
),
profiles AS (
    SELECT p.id, p.exchange_account, p.trading_state, p.pause_source, p.paused_at,
           p.last_auto_resume_at, w.mismatch_notional_usd::float8 AS notional,
           w.threshold_usd::float8 AS threshold, w.resume_held_back_by, w.resume_earliest_at,
           p.trading_state = p_paused AND p.pause_source = p_watchdog_source AS triggered
    FROM public.profiles p LEFT JOIN recon.watchdog_state w ON w.profile_id = p.id
),
-- The findings of each account's latest succeeded cycle, per profile (none for account-level
-- findings such as foreign orders or position drift) and kind, with the notional at stake.
breakdown AS (
    SELECT m.exchange_account AS account, m.profile_id, m.kind, count(*) AS findings,
           round(COALESCE(sum(m.notional_usd), 0), 2)::float8 AS notional_usd
    FROM recon.mismatches m JOIN last_success ls
      ON ls.cycle_id = m.cycle_id AND ls.exchange_account = m.exchange_account
    GROUP BY m.exchange_account, m.profile_id, m.kind
),
-- Alerts per account and profile: raised in the last day, and not delivered (still retrying,
-- or given up); and per reason, all time (the Prometheus counter).
alerts AS (
    SELECT a.exchange_account AS account, a.profile_id, a.reason, count(*) AS raised,
           count(*) FILTER (WHERE a.raised_at > now() - interval '1 day') AS last_day,
           count(*) FILTER (WHERE a.delivery_status IN (p_alert_pending, p_alert_given_up))
               AS undelivered
    FROM recon.alerts a GROUP BY 1, 2, 3
)
SELECT jsonb_build_object(
    'accounts', COALESCE((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.account) FROM accounts a),
                         '[]'::jsonb),
    'global', jsonb_build_object(
        'checked_at', now(),
        'quarantined', (SELECT count(*) FROM recon.quarantine WHERE released_at IS NULL),
        'auto_closed', (SELECT count(*) FROM recon.corrections
                         WHERE handler = p_synthetic_exit AND outcome = p_applied
                           AND NOT dry_run),
        'watchdog', EXISTS (SELECT 1 FROM public.profiles
                             WHERE trading_state = p_paused
                               AND pause_source = p_watchdog_source)),
    'profiles', COALESCE((SELECT jsonb_agg(to_jsonb(p) ORDER BY p.exchange_account, p.id)
                          FROM profiles p), '[]'::jsonb),
    'breakdown', COALESCE((SELECT jsonb_agg(to_jsonb(b) ORDER BY b.account,
                                            b.profile_id NULLS FIRST, b.kind)
                           FROM breakdown b), '[]'::jsonb),
    'alerts', COALESCE((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.account NULLS FIRST,
                                         a.profile_id NULLS FIRST, a.reason)
                        FROM alerts a), '[]'::jsonb),
    'cumulative', (SELECT jsonb_build_object(
                       'mismatch', count(*),
                       'missing_from_exchange',
                           count(*) FILTER (WHERE kind = p_missing_from_exchange),
                       'missing_in_db', count(*) FILTER (WHERE kind = p_missing_in_db),
                       'lock_contention', (SELECT count(*) FROM recon.lock_contention))
                   FROM recon.mismatches));
$$;
