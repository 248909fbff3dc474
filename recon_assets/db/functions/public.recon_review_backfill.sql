-- An operator's call on an EXIT backfill decision (the approve_backfill / reject_backfill jobs):
-- appended to recon.backfill_reviews with the (fill, slice) pair the decision names, which the
-- following cycles honour (core/backfill.py). A decision that names no slice cannot be reviewed
-- (attribute its fill with a trade id hint, recon_add_exit_fill_hint). Returns the review id and
-- the decision.
CREATE OR REPLACE FUNCTION public.recon_review_backfill(
    p_decision_id bigint, p_verdict text, p_note text, p_run_id text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    d recon.backfill_decisions%ROWTYPE;
    v_id bigint;
BEGIN
    IF p_verdict IS NULL OR p_verdict NOT IN ('approve', 'reject') THEN
        RAISE EXCEPTION 'recon_review_backfill: the verdict is approve or reject, not %',
            COALESCE(p_verdict, 'none');
    END IF;
    IF COALESCE(pg_catalog.btrim(p_note), '') = '' THEN
        RAISE EXCEPTION 'recon_review_backfill: a note saying why is required';
    END IF;
    PERFORM recon._require_operator_request('recon_review_backfill', p_run_id,
                                            ARRAY[p_verdict || '_backfill']);
    SELECT * INTO d FROM recon.backfill_decisions WHERE id = p_decision_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recon_review_backfill: no backfill decision %', p_decision_id;
    END IF;
    IF d.trade_id IS NULL THEN
        RAISE EXCEPTION 'recon_review_backfill: decision % (fill % on %) names no slice: %; attribute the fill with a trade id hint (recon_add_exit_fill_hint) instead',
            d.id, d.exchange_fill_id, d.symbol, d.reason;
    END IF;
    INSERT INTO recon.backfill_reviews (decision_id, verdict, note, exchange_account, symbol,
                                        exchange_fill_id, profile_id, trade_id, slice_no, run_id)
    VALUES (d.id, p_verdict, pg_catalog.btrim(p_note), d.exchange_account, d.symbol,
            d.exchange_fill_id, d.profile_id, d.trade_id, d.slice_no, p_run_id)
    RETURNING id INTO v_id;
    RETURN pg_catalog.jsonb_build_object('review_id', v_id, 'decision', pg_catalog.to_jsonb(d));
END;
$$;
