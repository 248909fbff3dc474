-- A trade id hint for the EXIT backfill: the fills of exchange order p_exchange_order_id on
-- account p_account belong to trade p_trade_id of profile p_profile_id (for a close the exchange
-- tagged with a foreign client order id, e.g. from the trading app's own UI). Adding the same
-- hint again is a no-op; a hint naming another trade for the order is refused.
CREATE OR REPLACE FUNCTION public.recon_add_exit_fill_hint(
    p_account text, p_exchange_order_id text, p_profile_id text, p_trade_id text, p_note text,
    p_added_by text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    h recon.exit_fill_hints%ROWTYPE;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.profiles
                   WHERE id = p_profile_id AND exchange_account = p_account) THEN
        RAISE EXCEPTION 'recon_add_exit_fill_hint: profile % does not trade on account %',
            p_profile_id, p_account;
    END IF;
    INSERT INTO recon.exit_fill_hints (exchange_account, exchange_order_id, profile_id, trade_id,
                                       note, added_by)
    VALUES (p_account, p_exchange_order_id, p_profile_id, p_trade_id, p_note, p_added_by)
    ON CONFLICT (exchange_account, exchange_order_id) DO NOTHING;
    SELECT * INTO h FROM recon.exit_fill_hints
     WHERE exchange_account = p_account AND exchange_order_id = p_exchange_order_id;
    IF h.profile_id <> p_profile_id OR h.trade_id <> p_trade_id THEN
        RAISE EXCEPTION 'recon_add_exit_fill_hint: order % of % is hinted to trade % of profile % already (hint %)',
            p_exchange_order_id, p_account, h.trade_id, h.profile_id, h.id;
    END IF;
    RETURN pg_catalog.to_jsonb(h);
END;
$$;
