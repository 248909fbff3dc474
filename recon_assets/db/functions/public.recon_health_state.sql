-- Everything /internal/health and /metrics report (metrics/health.py), read in one statement
-- (one snapshot, so every number of one answer comes from the same moment), as one JSON object:
--   "accounts"    per watched account: its latest finished and latest succeeded cycle, that
--                 cycle's finding counts and the parity heartbeat's ghosts
--   "global"      the database's now, open quarantines, applied synthetic exits, whether the
--                 watchdog holds any profile paused
--   "profiles"    every profile's trading gate and its watchdog state
--   "breakdown"   the latest succeeded cycles' findings per watched account, profile and kind
--   "alerts"      alerts per account, profile and reason
--   "cumulative"  every finding ever recorded (and of two kinds), lock contention rows
-- Every part is bounded whatever the history's length (a scrape comes every few seconds): the
-- latest cycles are one index probe per account, the latest cycle's rows are read by its id,
-- and the all-time totals come from the tables the history triggers keep (migration 0024,
-- db/functions/recon.count_*.sql), one row per account or profile and kind.
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
WITH RECURSIVE prof AS (SELECT DISTINCT exchange_account FROM public.profiles),
-- The accounts of recon.cycles, one index probe each (a skip scan): only without profiles.
cycle_accounts AS (
    SELECT (SELECT min(c.exchange_account) FROM recon.cycles c) AS exchange_account
    WHERE NOT EXISTS (SELECT 1 FROM prof)
    UNION ALL
    SELECT (SELECT min(c.exchange_account) FROM recon.cycles c
            WHERE c.exchange_account > a.exchange_account)
    FROM cycle_accounts a WHERE a.exchange_account IS NOT NULL
),
watched AS (
    SELECT exchange_account FROM prof
    UNION
    SELECT exchange_account FROM cycle_accounts WHERE exchange_account IS NOT NULL
),
latest AS (
    SELECT w.exchange_account, su.cycle_id AS s_cycle, su.finished_at AS s_finished,
           su.started_at AS s_started, su.uncharged_drift_usd, su.uncharged_drift, fa.cycle_id AS f_cycle, fa.finished_at AS f_finished,
           fa.started_at AS f_started
    FROM watched w
    LEFT JOIN LATERAL (
        SELECT c.cycle_id, c.finished_at, c.started_at, c.uncharged_drift_usd, c.uncharged_drift
        FROM recon.cycles c
        WHERE c.exchange_account = w.exchange_account AND c.status = p_succeeded
        ORDER BY c.finished_at DESC NULLS LAST, c.started_at DESC LIMIT 1) su ON true
    LEFT JOIN LATERAL (
        SELECT c.cycle_id, c.finished_at, c.started_at FROM recon.cycles c
        WHERE c.exchange_account = w.exchange_account AND c.status = p_failed
        ORDER BY c.finished_at DESC NULLS LAST, c.started_at DESC LIMIT 1) fa ON true
),
-- The later of the two (finished first, then started, nulls last: the order of the index).
last_finished AS (
    SELECT l.exchange_account,
           CASE WHEN failed_later THEN l.f_cycle ELSE l.s_cycle END AS cycle_id,
           CASE WHEN failed_later THEN p_failed ELSE p_succeeded END AS status,
           CASE WHEN failed_later THEN l.f_finished ELSE l.s_finished END AS finished_at
    FROM latest l
    CROSS JOIN LATERAL (SELECT l.f_cycle IS NOT NULL AND (
        l.s_cycle IS NULL
        OR (l.f_finished IS NOT NULL AND l.s_finished IS NULL)
        OR l.f_finished > l.s_finished
        OR (l.f_finished IS NOT DISTINCT FROM l.s_finished AND l.f_started > l.s_started))
        AS failed_later) o
    WHERE l.s_cycle IS NOT NULL OR l.f_cycle IS NOT NULL
),
-- With the position drift that cycle could charge to no profile (account level).
last_success AS (
    SELECT l.exchange_account, l.s_cycle AS cycle_id, l.s_finished AS finished_at,
           l.uncharged_drift_usd, l.uncharged_drift
    FROM latest l WHERE l.s_cycle IS NOT NULL
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
           COALESCE(ls.uncharged_drift_usd, 0)::float8 AS uncharged_drift_usd,
           COALESCE(ls.uncharged_drift, '[]'::jsonb) AS uncharged_drift
    FROM watched w
    LEFT JOIN last_finished lf USING (exchange_account)
    LEFT JOIN last_success ls USING (exchange_account)
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
    SELECT ls.exchange_account AS account, b.profile_id, b.kind, b.findings, b.notional_usd
    FROM last_success ls
    CROSS JOIN LATERAL (
        SELECT m.profile_id, m.kind, count(*) AS findings,
               round(COALESCE(sum(m.notional_usd), 0), 2)::float8 AS notional_usd
        FROM recon.mismatches m
        WHERE m.cycle_id = ls.cycle_id AND m.exchange_account = ls.exchange_account
        GROUP BY m.profile_id, m.kind) b
),
-- Alerts per account and profile: raised in the last day, and not delivered (still retrying,
-- or given up); and per reason, all time (the Prometheus counter).
alert_totals AS (
    SELECT t.exchange_account AS account, t.profile_id, t.reason, sum(t.n)::bigint AS raised,
           COALESCE(sum(t.n) FILTER (WHERE t.delivery_status IN (p_alert_pending,
                                                                 p_alert_given_up)), 0)::bigint
               AS undelivered
    FROM recon.alert_totals t GROUP BY 1, 2, 3 HAVING sum(t.n) > 0
),
alerts_last_day AS (
    SELECT a.exchange_account AS account, a.profile_id, a.reason, count(*) AS last_day
    FROM recon.alerts a WHERE a.raised_at > now() - interval '1 day' GROUP BY 1, 2, 3
),
alerts AS (
    SELECT t.account, t.profile_id, t.reason, t.raised, COALESCE(d.last_day, 0) AS last_day,
           t.undelivered
    FROM alert_totals t LEFT JOIN alerts_last_day d
      ON d.account IS NOT DISTINCT FROM t.account
     AND d.profile_id IS NOT DISTINCT FROM t.profile_id AND d.reason = t.reason
)
SELECT jsonb_build_object(
    'accounts', COALESCE((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.account) FROM accounts a),
                         '[]'::jsonb),
    'global', jsonb_build_object(
        'checked_at', now(),
        'quarantined', (SELECT count(*) FROM recon.quarantine WHERE released_at IS NULL),
        'auto_closed', (SELECT COALESCE(sum(n), 0) FROM recon.correction_totals
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
                       'mismatch', COALESCE(sum(n), 0),
                       'missing_from_exchange',
                           COALESCE(sum(n) FILTER (WHERE kind = p_missing_from_exchange), 0),
                       'missing_in_db',
                           COALESCE(sum(n) FILTER (WHERE kind = p_missing_in_db), 0),
                       'lock_contention', (SELECT COALESCE(sum(n), 0)
                                           FROM recon.lock_contention_totals))
                   FROM recon.mismatch_totals));
$$;
