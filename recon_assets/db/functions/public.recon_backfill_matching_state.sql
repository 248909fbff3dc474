-- What the EXIT backfill's matching reads besides the snapshots, for one exchange account, as
-- JSON in one statement (BackfillStore.matching_state):
--   booked   [[symbol, exchange_fill_id], ...]: those of p_fills (a JSON array of such pairs,
--            the window's fills) that public.applied_fills holds already;
--   hints    [{exchange_order_id, profile_id, trade_id}, ...]: the account's trade id hints;
--   reviews  [{symbol, exchange_fill_id, profile_id, trade_id, slice_no, verdict, id, note}, ...]:
--            the latest operator call per (fill, slice).
CREATE OR REPLACE FUNCTION public.recon_backfill_matching_state(p_account text, p_fills jsonb)
RETURNS jsonb
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT jsonb_build_object(
        'booked', COALESCE((
            SELECT jsonb_agg(jsonb_build_array(a.symbol, a.exchange_fill_id))
            FROM public.applied_fills a
            WHERE a.exchange_account = p_account AND (a.symbol, a.exchange_fill_id) IN (
                SELECT f.pair ->> 0, f.pair ->> 1 FROM jsonb_array_elements(p_fills) AS f(pair))),
            '[]'::jsonb),
        'hints', COALESCE((
            SELECT jsonb_agg(jsonb_build_object('exchange_order_id', h.exchange_order_id,
                                                'profile_id', h.profile_id,
                                                'trade_id', h.trade_id))
            FROM recon.exit_fill_hints h WHERE h.exchange_account = p_account), '[]'::jsonb),
        'reviews', COALESCE((
            SELECT jsonb_agg(to_jsonb(r)) FROM (
                SELECT DISTINCT ON (v.symbol, v.exchange_fill_id, v.profile_id, v.trade_id,
                                    v.slice_no)
                       v.symbol, v.exchange_fill_id, v.profile_id, v.trade_id, v.slice_no,
                       v.verdict, v.id, v.note
                FROM recon.backfill_reviews v WHERE v.exchange_account = p_account
                ORDER BY v.symbol, v.exchange_fill_id, v.profile_id, v.trade_id, v.slice_no,
                         v.id DESC) r), '[]'::jsonb));
$$;
