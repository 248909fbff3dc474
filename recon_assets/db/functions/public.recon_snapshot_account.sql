-- One consistent snapshot of an exchange account's database state, in one statement (so one
-- MVCC snapshot), as JSON. Both store backends read through it: psycopg with SELECT, and
-- supabase-py with rpc('recon_snapshot_account'), so they see exactly the same thing.
-- Orders: every open order, plus terminal ones touched in the last p_recent_hours (an exchange
-- order still open while the database calls it filled or cancelled is status drift).
CREATE OR REPLACE FUNCTION public.recon_snapshot_account(p_account text, p_recent_hours integer DEFAULT 24)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object(
        'read_at', clock_timestamp(),
        'profiles', COALESCE((
            SELECT jsonb_agg(to_jsonb(p) ORDER BY p.profile_id) FROM (
                SELECT id AS profile_id, exchange_account, sub_tag, allocated_capital_usd,
                       trading_state, pause_source, paused_at, last_auto_resume_at
                FROM profiles WHERE exchange_account = p_account) p), '[]'::jsonb),
        'orders', COALESCE((
            SELECT jsonb_agg(to_jsonb(o) ORDER BY o.client_order_id) FROM (
                SELECT o.profile_id, p.exchange_account, o.trade_id, o.intent, o.symbol, o.side,
                       o.client_order_id, o.exchange_order_id, o.status, o.qty, o.filled_qty,
                       o.price, o.created_at, o.updated_at
                FROM orders o JOIN profiles p ON p.id = o.profile_id
                WHERE p.exchange_account = p_account
                  AND (o.status = ANY (recon.open_order_statuses())
                       OR o.updated_at > now() - make_interval(hours => p_recent_hours))) o),
            '[]'::jsonb),
        'positions', COALESCE((
            SELECT jsonb_agg(to_jsonb(x) ORDER BY x.profile_id, x.symbol) FROM (
                SELECT s.profile_id, p.exchange_account, s.symbol, s.side, s.qty, s.avg_price,
                       s.updated_at
                FROM positions s JOIN profiles p ON p.id = s.profile_id
                WHERE p.exchange_account = p_account) x), '[]'::jsonb),
        'trade_slices', COALESCE((
            SELECT jsonb_agg(to_jsonb(t) ORDER BY t.trade_id, t.slice_no) FROM (
                SELECT t.profile_id, p.exchange_account, t.trade_id, t.slice_no, t.symbol, t.side,
                       t.entry_qty, t.exit_qty, t.virtual_open_qty, t.entry_price, t.opened_at,
                       t.status, t.updated_at,
                       -- The client order ids of the trade's own orders: the evidence that
                       -- attributes the slice to its profile (core.attribution).
                       COALESCE((SELECT jsonb_agg(o.client_order_id ORDER BY o.client_order_id)
                                 FROM orders o WHERE o.profile_id = t.profile_id
                                   AND o.trade_id = t.trade_id), '[]'::jsonb) AS order_client_ids
                FROM trade_history t JOIN profiles p ON p.id = t.profile_id
                WHERE p.exchange_account = p_account AND t.status = 'open') t), '[]'::jsonb)
    );
$$;
