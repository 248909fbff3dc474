-- Fill arguments of the fill handlers (recon_reconcile_entry_fill / recon_reconcile_exit_fill):
--
-- Fill arguments carry the exchange's cumulative view of the order (what ccxt's fetch_order
-- gives): p_filled_qty = total filled, p_avg_fill_price = average price of that total, p_fills =
-- ALL fills of the order as a JSON array [{"id", "qty", "price", "fee_usd"?, "fee_asset"?,
-- "fee_amount"?, "filled_at"?}]; they must add up to p_filled_qty.
--
-- What is booked comes from the fills, never from a difference of totals: the fills the
-- database has not booked yet (applied_fills, UNIQUE per account, symbol and fill id) are
-- booked, at their own prices and fees, and nothing else. Before that the database must agree
-- with itself and with the exchange, or the correction is refused (SQLSTATE RCREF, the reason
-- code in DETAIL) and nothing changes: an operator looks, nothing is guessed. (A fill the
-- exchange reports for the order but booked to another order, like every other illegal
-- transition, raises a plain exception naming both orders.)
--   fills_contradict_order    applied_fills of the order add up to another qty than
--                             orders.filled_qty (e.g. the trading app booked a fill, then
--                             crashed before updating the order)
--   booked_fill_not_reported  a fill booked for the order is not among the exchange's fills
--   booked_fill_differs       a booked fill has another qty or price than the exchange says
--   fills_missing             the exchange reports more filled than booked, without the fills
--   fill_booked_concurrently  another writer booked one of the fills during this correction
-- So the same evidence under another key books nothing twice ("unchanged").

-- Book the exchange's cumulative fill state on an order: the order row and the new fills in
-- applied_fills (the caller moves the slice and the position by the returned delta). Returns
-- {"status": "unchanged"} when the database already agrees, else {"status": "changed", "delta",
-- "delta_price", "fee_usd", "unpriced_fees", "unpriced_fills", "fills": {"booked",
-- "already_booked"}, "order": {"before", "after"}}.
-- fee_usd is the USD sum of the new fills' fees, NULL when one of them was paid in an asset recon
-- could not price (a fee_amount other than 0 without a fee_usd): unknown is never zero, so the
-- caller's PnL becomes unknown too. unpriced_fees counts those fills, unpriced_fills lists them
-- ({"id", "fee_asset", "fee_amount"}). A fill without fee_usd or fee_amount paid no fee.
CREATE OR REPLACE FUNCTION recon._book_order_fill(p_handler text, o public.orders, r jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_filled numeric := (r->>'filled_qty')::numeric;
    v_avg numeric := (r->>'avg_fill_price')::numeric;
    v_final text := r->>'final_status';
    v_fills jsonb := COALESCE(r->'fills', '[]'::jsonb);
    v_account text;
    v_booked_qty numeric;
    v_booked_ids jsonb;
    v_unreported text;
    v_differs text;
    v_other record;
    v_new jsonb;
    v_delta numeric;
    v_price numeric;
    v_fee numeric;
    v_unpriced integer;
    v_unpriced_fills jsonb;
    v_status text;
    a public.orders%ROWTYPE;
BEGIN
    -- NaN and Infinity are numerics in Postgres (greater than every number): never booked.
    IF v_filled IS NULL OR v_filled <= 0 OR v_filled IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION '%: order % needs a filled qty > 0 (got %); an order that filled nothing is corrected by recon_reconcile_cancel',
            p_handler, o.client_order_id, COALESCE(v_filled::text, 'none');
    END IF;
    IF v_avg IS NULL OR v_avg <= 0 OR v_avg IN ('NaN', 'Infinity') THEN
        RAISE EXCEPTION '%: order % needs a finite average fill price > 0 (got %)',
            p_handler, o.client_order_id, COALESCE(v_avg::text, 'none');
    END IF;
    IF v_final IS NOT NULL AND v_final NOT IN ('canceled', 'expired') THEN
        RAISE EXCEPTION '%: order %: final status must be canceled or expired (or none), not %',
            p_handler, o.client_order_id, v_final;
    END IF;
    IF v_filled > o.qty THEN
        RAISE EXCEPTION '%: the exchange reports % filled for order %, more than its qty %',
            p_handler, v_filled, o.client_order_id, o.qty;
    END IF;
    IF v_filled < o.filled_qty THEN
        RAISE EXCEPTION '%: the exchange reports % filled for order %, less than the % the database booked; an operator must look at it',
            p_handler, v_filled, o.client_order_id, o.filled_qty;
    END IF;
    PERFORM recon._check_fills(p_handler, o, v_fills, v_filled);
    SELECT exchange_account INTO v_account FROM public.profiles WHERE id = o.profile_id;

    -- A fill the exchange reports for this order but the database booked to another order.
    SELECT f.exchange_fill_id AS id, f.client_order_id AS owner INTO v_other
      FROM public.applied_fills f
      JOIN pg_catalog.jsonb_array_elements(v_fills) e ON f.exchange_fill_id = e->>'id'
     WHERE f.exchange_account = v_account AND f.symbol = o.symbol
       AND f.client_order_id IS NOT NULL AND f.client_order_id <> o.client_order_id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%: fill % (%) is already booked to order %, not to order %',
            p_handler, v_other.id, o.symbol, v_other.owner, o.client_order_id;
    END IF;

    -- What the database booked for this order: its applied fills (by client order id, or by a
    -- reported fill id booked without one), compared with orders.filled_qty and the exchange.
    WITH booked AS (
        SELECT f.exchange_fill_id AS id, f.qty, f.price FROM public.applied_fills f
         WHERE f.exchange_account = v_account AND f.symbol = o.symbol
           AND (f.client_order_id = o.client_order_id
                OR (f.client_order_id IS NULL AND f.exchange_fill_id IN (
                        SELECT e->>'id' FROM pg_catalog.jsonb_array_elements(v_fills) e)))),
    reported AS (
        SELECT e->>'id' AS id, (e->>'qty')::numeric AS qty, (e->>'price')::numeric AS price
          FROM pg_catalog.jsonb_array_elements(v_fills) e)
    SELECT COALESCE(pg_catalog.sum(b.qty), 0),
           COALESCE(pg_catalog.jsonb_agg(b.id ORDER BY b.id), '[]'::jsonb),
           pg_catalog.min(b.id) FILTER (WHERE x.id IS NULL),
           pg_catalog.min(b.id) FILTER (WHERE x.id IS NOT NULL
                                         AND (x.qty <> b.qty OR x.price <> b.price))
      INTO v_booked_qty, v_booked_ids, v_unreported, v_differs
      FROM booked b LEFT JOIN reported x ON x.id = b.id;
    IF v_booked_qty <> o.filled_qty THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'fills_contradict_order',
            MESSAGE = pg_catalog.format(
                '%s: order %s: applied_fills book %s for it but orders.filled_qty says %s: the database contradicts itself, nothing is booked; an operator must look at it',
                p_handler, o.client_order_id, v_booked_qty, o.filled_qty);
    END IF;
    IF v_unreported IS NOT NULL AND pg_catalog.jsonb_array_length(v_fills) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'booked_fill_not_reported',
            MESSAGE = pg_catalog.format(
                '%s: order %s: fill %s is booked in applied_fills but the exchange does not report it for the order; an operator must look at it',
                p_handler, o.client_order_id, v_unreported);
    END IF;
    IF v_differs IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'booked_fill_differs',
            MESSAGE = pg_catalog.format(
                '%s: order %s: fill %s is booked with another qty or price than the exchange reports; an operator must look at it',
                p_handler, o.client_order_id, v_differs);
    END IF;

    -- The fills not booked yet: exactly what is new.
    SELECT COALESCE(pg_catalog.jsonb_agg(e ORDER BY e->>'id'), '[]'::jsonb),
           COALESCE(pg_catalog.sum((e->>'qty')::numeric), 0),
           pg_catalog.sum((e->>'qty')::numeric * (e->>'price')::numeric),
           COALESCE(pg_catalog.sum((e->>'fee_usd')::numeric), 0),
           pg_catalog.count(*) FILTER (WHERE e->>'fee_usd' IS NULL
                                         AND COALESCE((e->>'fee_amount')::numeric, 0) <> 0),
           COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                        'id', e->>'id', 'fee_asset', e->>'fee_asset',
                        'fee_amount', (e->>'fee_amount')::numeric) ORDER BY e->>'id')
                    FILTER (WHERE e->>'fee_usd' IS NULL
                              AND COALESCE((e->>'fee_amount')::numeric, 0) <> 0), '[]'::jsonb)
      INTO v_new, v_delta, v_price, v_fee, v_unpriced, v_unpriced_fills
      FROM pg_catalog.jsonb_array_elements(v_fills) e
     WHERE NOT v_booked_ids ? (e->>'id');
    -- The sum of the known fees is not the fee: one fee without a price makes it unknown.
    IF v_unpriced > 0 THEN
        v_fee := NULL;
    END IF;
    IF v_delta <> v_filled - o.filled_qty THEN
        RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'fills_missing',
            MESSAGE = pg_catalog.format(
                '%s: order %s: the exchange reports %s filled, the database booked %s, and the fills not booked yet add up to %s: evidence first, the fills are needed to book them',
                p_handler, o.client_order_id, v_filled, o.filled_qty, v_delta);
    END IF;
    v_price := CASE WHEN v_delta > 0 THEN v_price / v_delta END;

    v_status := CASE WHEN v_filled = o.qty THEN 'filled'
                     WHEN v_final IS NOT NULL THEN v_final
                     ELSE 'partially_filled' END;
    IF v_delta = 0 AND v_status = o.status THEN
        RETURN pg_catalog.jsonb_build_object(
            'status', 'unchanged',
            'reason', 'the database already books this fill state for the order',
            'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o)));
    END IF;
    IF NOT (o.status = ANY (recon.open_order_statuses())) THEN
        RAISE EXCEPTION '%: illegal transition for order % (trade %): it is % in the database; the exchange reports % filled (%)',
            p_handler, o.client_order_id, o.trade_id, o.status, v_filled, v_status;
    END IF;
    PERFORM recon._book_fills(p_handler, o, v_account,
                              COALESCE(r->>'exchange_order_id', o.exchange_order_id), v_new);
    UPDATE public.orders
       SET status = v_status,
           filled_qty = v_filled,
           avg_fill_price = CASE WHEN v_delta > 0 THEN v_avg ELSE avg_fill_price END,
           exchange_order_id = COALESCE(exchange_order_id, r->>'exchange_order_id'),
           updated_at = pg_catalog.now()
     WHERE id = o.id
    RETURNING * INTO a;
    RETURN pg_catalog.jsonb_build_object(
        'status', 'changed', 'delta', v_delta, 'delta_price', v_price,
        'fee_usd', v_fee, 'unpriced_fees', v_unpriced, 'unpriced_fills', v_unpriced_fills,
        'fills', pg_catalog.jsonb_build_object(
            'booked', COALESCE((SELECT pg_catalog.jsonb_agg(e->'id')
                                  FROM pg_catalog.jsonb_array_elements(v_new) e), '[]'::jsonb),
            'already_booked', v_booked_ids),
        'order', pg_catalog.jsonb_build_object('before', pg_catalog.to_jsonb(o),
                                               'after', pg_catalog.to_jsonb(a)));
END;
$$;
