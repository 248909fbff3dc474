-- The integrity watchdog's verdicts recorded for one cycle of an account, one row per profile,
-- with each profile's trading gate as it is now (WatchdogStore.verdicts).
CREATE OR REPLACE FUNCTION public.recon_watchdog_verdicts(p_cycle_id text, p_account text)
RETURNS TABLE (profile_id text, allocated_capital_usd double precision,
               mismatch_notional_usd double precision, ghost_notional_usd double precision,
               order_notional_usd double precision, position_notional_usd double precision,
               threshold_pct double precision, threshold_usd double precision,
               findings integer, tripped boolean, clean boolean, reason text,
               trading_state text, pause_source text, paused_at timestamptz)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT w.profile_id, w.allocated_capital_usd::float8, w.mismatch_notional_usd::float8,
           w.ghost_notional_usd::float8, w.order_notional_usd::float8,
           w.position_notional_usd::float8, w.threshold_pct::float8, w.threshold_usd::float8,
           w.findings, w.tripped, w.clean, w.reason, p.trading_state, p.pause_source, p.paused_at
    FROM recon.watchdog_checks w JOIN public.profiles p ON p.id = w.profile_id
    WHERE w.cycle_id = p_cycle_id AND w.exchange_account = p_account
    ORDER BY w.profile_id;
$$;
