-- Every exchange account a profile names, each once: the partitions of the reconciliation
-- cycle (TradingTables.exchange_accounts). SETOF text, not a one-column TABLE: both backends
-- give a list of strings.
CREATE OR REPLACE FUNCTION public.recon_exchange_accounts()
RETURNS SETOF text
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT DISTINCT p.exchange_account FROM public.profiles p;
$$;
