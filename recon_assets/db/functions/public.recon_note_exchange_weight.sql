-- What the exchange said about the budget: the weight it counts this minute
-- (X-MBX-USED-WEIGHT-1M; ours is raised to it, never lowered), a Retry-After (429: nobody sends
-- before it ends) and a ban (418: nobody sends before it ends; counted).
CREATE OR REPLACE FUNCTION public.recon_note_exchange_weight(
    p_egress text, p_used integer DEFAULT NULL, p_retry_after_s numeric DEFAULT NULL,
    p_banned_s numeric DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_minute timestamptz := pg_catalog.date_trunc('minute', pg_catalog.clock_timestamp());
BEGIN
    INSERT INTO recon.exchange_weight_budget (egress, window_start) VALUES (p_egress, v_minute)
    ON CONFLICT (egress) DO NOTHING;
    UPDATE recon.exchange_weight_budget SET
        used = CASE WHEN window_start < v_minute THEN COALESCE(p_used, 0)
                    ELSE GREATEST(used, COALESCE(p_used, 0)) END,
        window_start = v_minute,
        blocked_until = CASE WHEN p_retry_after_s IS NULL THEN blocked_until
            ELSE GREATEST(blocked_until, pg_catalog.clock_timestamp()
                                         + p_retry_after_s * interval '1 second') END,
        banned_until = CASE WHEN p_banned_s IS NULL THEN banned_until
            ELSE GREATEST(banned_until, pg_catalog.clock_timestamp()
                                        + p_banned_s * interval '1 second') END,
        bans = bans + CASE WHEN p_banned_s IS NULL THEN 0 ELSE 1 END,
        updated_at = pg_catalog.now()
     WHERE egress = p_egress;
END;
$$;
