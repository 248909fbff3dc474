-- The trading gate as the trading app reads it (README: "The trading gate"): a profile may
-- start an ENTRY or EXIT flow only while its trading_state is 'active', never while it is
-- 'reconciling' (a correction is running) or 'paused' (the watchdog, an operator, or the app).
--   public.recon_trading_gate (view)          every profile's gate, with the auto-resume outlook
--   public.recon_may_trade(p_profile_id)      the one answer, for the order-placing transaction

-- What the trading app reads: one row per profile; may_open_flows is true only while the
-- profile is active (never while reconciling or paused).
CREATE OR REPLACE VIEW public.recon_trading_gate AS
SELECT p.id AS profile_id, p.exchange_account, p.trading_state, p.pause_source, p.paused_at,
       p.last_auto_resume_at, w.resume_earliest_at AS auto_resume_earliest_at,
       w.resume_held_back_by AS auto_resume_held_back_by,
       p.trading_state = 'active' AS may_open_flows
FROM public.profiles p
LEFT JOIN recon.watchdog_state w ON w.profile_id = p.id;

-- The same answer for one profile, under a share lock of its row when called inside the
-- transaction that records the new order, so a pause committed before it is always seen and
-- one arriving meanwhile waits for that transaction.
CREATE OR REPLACE FUNCTION public.recon_may_trade(p_profile_id text)
RETURNS boolean
LANGUAGE sql
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT COALESCE((SELECT trading_state = 'active' FROM public.profiles
                      WHERE id = p_profile_id FOR SHARE), false);
$$;
