-- The EXIT backfill decision of cycle p_cycle_id about one fill and slice (no row when that
-- cycle made none); numbers as exact text (BackfillStore.pair_in_cycle, for approve_backfill).
CREATE OR REPLACE FUNCTION public.recon_backfill_pair_in_cycle(
    p_cycle_id text, p_account text, p_symbol text, p_exchange_fill_id text, p_profile_id text,
    p_trade_id text, p_slice_no integer)
RETURNS TABLE (decision_id bigint, cycle_id text, exchange_account text, symbol text,
               exchange_fill_id text, exchange_order_id text, client_order_id text,
               fill_side text, fill_qty text, fill_price text, fee_usd text,
               filled_at timestamptz, profile_id text, trade_id text, slice_no integer,
               match_mode text, strong boolean, assignable boolean, decision text, reason text,
               idempotency_key text, created_at timestamptz)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = ''
AS $$
    SELECT d.id, d.cycle_id, d.exchange_account, d.symbol, d.exchange_fill_id,
           d.exchange_order_id, d.client_order_id, d.fill_side, d.fill_qty::text,
           d.fill_price::text, d.fee_usd::text, d.filled_at, d.profile_id, d.trade_id,
           d.slice_no, d.match_mode, d.strong, d.assignable, d.decision, d.reason,
           d.idempotency_key, d.created_at
    FROM recon.backfill_decisions d
    WHERE d.cycle_id = p_cycle_id AND d.exchange_account = p_account AND d.symbol = p_symbol
      AND d.exchange_fill_id = p_exchange_fill_id AND d.profile_id = p_profile_id
      AND d.trade_id = p_trade_id AND d.slice_no = p_slice_no;
$$;
