-- How many of p_wanted single-order probes a correction run of cycle p_cycle_id may make on
-- account p_account: what is left of the cycle's budget of p_cap (migration 0025), taken at
-- once, so concurrent runs of one cycle (one per profile) never exceed it together
-- (ReconStore.take_order_probes).
CREATE OR REPLACE FUNCTION public.recon_take_order_probes(
    p_account text, p_cycle_id text, p_wanted integer, p_cap integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_used integer;
    v_granted integer;
BEGIN
    IF p_wanted IS NULL OR p_wanted < 0 OR p_cap IS NULL OR p_cap < 0 THEN
        RAISE EXCEPTION 'recon_take_order_probes: wanted and cap are counts >= 0, not % and %',
            p_wanted, p_cap;
    END IF;
    INSERT INTO recon.order_probe_budgets (exchange_account, cycle_id, used)
    VALUES (p_account, p_cycle_id, 0)
    ON CONFLICT (exchange_account, cycle_id) DO NOTHING;
    SELECT used INTO v_used FROM recon.order_probe_budgets
     WHERE exchange_account = p_account AND cycle_id = p_cycle_id FOR UPDATE;
    v_granted := GREATEST(0, LEAST(p_wanted, p_cap - v_used));
    UPDATE recon.order_probe_budgets SET used = used + v_granted, updated_at = now()
     WHERE exchange_account = p_account AND cycle_id = p_cycle_id;
    RETURN v_granted;
END;
$$;
