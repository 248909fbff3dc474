-- Charge `p_weight` to the egress's budget of this clock minute, or say why not and until when:
-- {"granted": true, "used": n} or {"granted": false, "reason": "banned" | "retry_after" |
-- "budget", "until": timestamptz, "used": n}. One statement under the row lock, so concurrent
-- runs never overspend the minute together.
CREATE OR REPLACE FUNCTION public.recon_take_exchange_weight(
    p_egress text, p_weight integer, p_limit integer)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    b recon.exchange_weight_budget%ROWTYPE;
    v_minute timestamptz := pg_catalog.date_trunc('minute', pg_catalog.clock_timestamp());
BEGIN
    INSERT INTO recon.exchange_weight_budget (egress, window_start) VALUES (p_egress, v_minute)
    ON CONFLICT (egress) DO NOTHING;
    SELECT * INTO b FROM recon.exchange_weight_budget WHERE egress = p_egress FOR UPDATE;
    IF b.window_start < v_minute THEN
        b.window_start := v_minute;
        b.used := 0;
    END IF;
    IF b.banned_until > pg_catalog.clock_timestamp() THEN
        RETURN pg_catalog.jsonb_build_object('granted', false, 'reason', 'banned',
                                             'until', b.banned_until, 'used', b.used, 'bans', b.bans);
    END IF;
    IF b.blocked_until > pg_catalog.clock_timestamp() THEN
        RETURN pg_catalog.jsonb_build_object('granted', false, 'reason', 'retry_after',
                                             'until', b.blocked_until, 'used', b.used);
    END IF;
    IF b.used + p_weight > p_limit THEN
        UPDATE recon.exchange_weight_budget
           SET window_start = b.window_start, used = b.used, updated_at = pg_catalog.now()
         WHERE egress = p_egress;
        RETURN pg_catalog.jsonb_build_object('granted', false, 'reason', 'budget',
                                             'until', b.window_start + interval '1 minute',
                                             'used', b.used);
    END IF;
    UPDATE recon.exchange_weight_budget
       SET window_start = b.window_start, used = b.used + p_weight, updated_at = pg_catalog.now()
     WHERE egress = p_egress;
    RETURN pg_catalog.jsonb_build_object('granted', true, 'used', b.used + p_weight);
END;
$$;
