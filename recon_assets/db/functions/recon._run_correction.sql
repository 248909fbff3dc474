-- The common frame of the three lifecycle handlers (public.recon_reconcile_entry_fill,
-- recon_reconcile_exit_fill, recon_reconcile_cancel), the parity heartbeat's synthetic exit
-- (recon_synthetic_exit) and the EXIT backfill (recon_exit_backfill): lock, idempotency, dry
-- run, record.
--
-- Every handler runs in the caller's transaction (one rpc() = one transaction; with psycopg call
-- it in autocommit or its own transaction) and, in order:
--   1. takes the profile's reconciliation lock: pg_advisory_xact_lock(recon_profile_lock_key(p)).
--      Transaction-scoped, so it works behind Supabase's transaction pooler, is released by
--      COMMIT/ROLLBACK and by the death of the connection. Concurrent handlers for one profile
--      queue on it; handlers of different profiles do not wait for each other. A caller that
--      must not wait forever sets lock_timeout or statement_timeout (the wait is then an error,
--      which the caller records as lock contention).
--   2. looks the idempotency key up in recon.corrections: present -> returns
--      {"status": "already_applied", ...} and changes nothing (also for a run that has lost the
--      gate since: its resend of a call whose answer was lost learns what happened).
--   then a real (not dry-run) correction is refused, SQLSTATE RCREF, when the run may not
--   correct the profile: it lost the profile's reconciling gate (someone else ended or took over
--   its session, recon.reconciling_revoked; DETAIL gate_revoked), or another run owns the gate
--   (recon.reconciling; DETAIL gate_owned_by_another_run).
--   3. validates and applies the correction (orders, trade_history, positions, applied_fills,
--      then recon_recalculate_capital). An illegal transition raises an exception naming the
--      order, and the whole transaction (so the whole correction) is rolled back.
--   4. inserts the recon.corrections row (idempotency key UNIQUE, ON CONFLICT DO NOTHING) with
--      the evidence: {"input": p_evidence, "request": <arguments>, "change": <before/after>}.
--      If nothing is inserted (only possible for a writer that bypassed the lock), the applied
--      changes are rolled back to a savepoint and "already_applied" is returned.
-- and returns JSON: {"status": "applied" | "already_applied" | "dry_run" | "unchanged",
-- "handler", "idempotency_key", "correction_id", "profile_id", "trade_id", "client_order_id",
-- "order": {"before", "after"}, "slice": {...}, "position": {...}, "fills": {...},
-- "capital": {...}}. "unchanged" means the database already agrees with the evidence (e.g. a
-- fill booked under another key): nothing is changed and no correction row is written.
--
-- Dry run (p_dry_run = true): the correction is computed by the very same code, inside a
-- savepoint that is then rolled back, and only the record is kept: a recon.corrections row with
-- dry_run = true, key `<p_idempotency_key>:dry-run`, and the would-be change in its evidence.
-- The suffix keeps dry runs out of the real key space: a later real run with the same key still
-- applies (its key is free), a repeated dry run returns already_applied, and a dry run after the
-- real correction returns already_applied (the real key is looked up first). Keys ending in
-- ':dry-run' are therefore refused as input.

CREATE OR REPLACE FUNCTION recon._already_applied(c recon.corrections, p_handler text, p_profile_id text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF c.handler <> p_handler OR c.profile_id <> p_profile_id THEN
        RAISE EXCEPTION 'idempotency key % was already used by % for profile %, not by % for profile %',
            c.idempotency_key, c.handler, c.profile_id, p_handler, p_profile_id;
    END IF;
    RETURN pg_catalog.jsonb_build_object(
        'status', 'already_applied', 'handler', c.handler, 'idempotency_key', c.idempotency_key,
        'correction_id', c.id, 'cycle_id', c.cycle_id, 'dry_run', c.dry_run,
        'applied_at', c.applied_at, 'profile_id', c.profile_id, 'trade_id', c.trade_id,
        'client_order_id', c.client_order_id);
END;
$$;

CREATE OR REPLACE FUNCTION recon._run_correction(
    p_handler text, p_profile_id text, p_cycle_id text, p_idempotency_key text,
    p_client_order_id text, p_dry_run boolean, p_evidence jsonb, p_request jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_key text;
    v_existing recon.corrections%ROWTYPE;
    v_change jsonb;
    v_id bigint;
    v_detail text;
    v_owner text;
    v_revoked jsonb;
BEGIN
    IF p_profile_id IS NULL OR p_profile_id = '' THEN
        RAISE EXCEPTION 'recon_%: p_profile_id is required', p_handler;
    END IF;
    IF p_cycle_id IS NULL OR p_cycle_id = '' THEN
        RAISE EXCEPTION 'recon_%: p_cycle_id (the Dagster run id) is required', p_handler;
    END IF;
    IF p_idempotency_key IS NULL OR p_idempotency_key = '' THEN
        RAISE EXCEPTION 'recon_%: p_idempotency_key is required', p_handler;
    END IF;
    IF p_idempotency_key LIKE '%:dry-run' THEN
        RAISE EXCEPTION 'recon_%: idempotency key % ends with the reserved suffix :dry-run',
            p_handler, p_idempotency_key;
    END IF;
    IF p_dry_run IS NULL THEN
        RAISE EXCEPTION 'recon_%: p_dry_run must be true or false', p_handler;
    END IF;

    -- 1. The reconciliation lock: one corrector per profile at a time.
    PERFORM recon._lock_profile(p_profile_id);

    -- 2. Idempotency (after the lock, so the previous holder's commit is visible).
    v_key := CASE WHEN p_dry_run THEN p_idempotency_key || ':dry-run' ELSE p_idempotency_key END;
    SELECT * INTO v_existing FROM recon.corrections
     WHERE idempotency_key = p_idempotency_key OR idempotency_key = v_key
     ORDER BY dry_run LIMIT 1;
    IF FOUND THEN
        RETURN recon._already_applied(v_existing, p_handler, p_profile_id);
    END IF;

    -- The gate's owner. A run whose session was restored or taken over has lost the gate for
    -- good, even once no session is left (it may still be running on what it read before). And
    -- while a run owns the profile's reconciling session, no other run corrects it (so the
    -- owner's end never overtakes another run's changes).
    IF NOT p_dry_run THEN
        v_revoked := recon._gate_revocation(p_profile_id, p_cycle_id);
        IF v_revoked IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'gate_revoked',
                MESSAGE = pg_catalog.format('recon_%s: %s; it corrects nothing more',
                                            p_handler, v_revoked ->> 'reason');
        END IF;
        SELECT cycle_id INTO v_owner FROM recon.reconciling WHERE profile_id = p_profile_id;
        IF FOUND AND v_owner IS DISTINCT FROM p_cycle_id THEN
            RAISE EXCEPTION USING ERRCODE = 'RCREF', DETAIL = 'gate_owned_by_another_run',
                MESSAGE = pg_catalog.format(
                    'recon_%s: profile %s is reconciling under run %s, not %s: only the owner of the gate corrects it',
                    p_handler, p_profile_id, COALESCE(v_owner, '(none)'), p_cycle_id);
        END IF;
    END IF;

    -- 3./4. Apply and record, in a savepoint so a dry run or a lost insert leaves nothing behind.
    BEGIN
        v_change := CASE p_handler
            WHEN 'reconcile_entry_fill' THEN recon._apply_entry_fill(p_profile_id, p_client_order_id, p_request)
            WHEN 'reconcile_exit_fill' THEN recon._apply_exit_fill(p_profile_id, p_client_order_id, p_request)
            WHEN 'reconcile_cancel' THEN recon._apply_cancel(p_profile_id, p_client_order_id, p_request)
            WHEN 'synthetic_exit' THEN recon._apply_synthetic_exit(p_profile_id, p_idempotency_key, p_request)
            WHEN 'exit_backfill' THEN recon._apply_exit_backfill(p_profile_id, p_request)
        END;
        IF v_change IS NULL THEN
            RAISE EXCEPTION 'recon: unknown handler %', p_handler;
        END IF;
        IF v_change->>'status' = 'unchanged' THEN
            RETURN v_change || pg_catalog.jsonb_build_object(
                'handler', p_handler, 'idempotency_key', v_key, 'correction_id', NULL,
                'profile_id', p_profile_id, 'client_order_id', p_client_order_id,
                'dry_run', p_dry_run);
        END IF;
        v_change := (v_change - 'status') || pg_catalog.jsonb_build_object(
            'capital', public.recon_recalculate_capital(p_profile_id));
        IF p_dry_run THEN
            RAISE EXCEPTION USING ERRCODE = 'RCDRY', MESSAGE = 'recon dry run: roll the change back',
                                  DETAIL = v_change::text;
        END IF;
        INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id,
                                       client_order_id, dry_run, evidence)
        VALUES (v_key, p_cycle_id, p_profile_id, p_handler, v_change->>'trade_id',
                p_client_order_id, false,
                pg_catalog.jsonb_build_object('input', COALESCE(p_evidence, '{}'::jsonb),
                                              'request', p_request, 'change', v_change))
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'RCDUP', MESSAGE = 'recon: idempotency key taken';
        END IF;
    EXCEPTION
        WHEN SQLSTATE 'RCDRY' THEN
            GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
            v_change := v_detail::jsonb;
        WHEN SQLSTATE 'RCDUP' THEN
            SELECT * INTO v_existing FROM recon.corrections WHERE idempotency_key = v_key;
            RETURN recon._already_applied(v_existing, p_handler, p_profile_id);
    END;

    IF p_dry_run THEN
        INSERT INTO recon.corrections (idempotency_key, cycle_id, profile_id, handler, trade_id,
                                       client_order_id, dry_run, evidence)
        VALUES (v_key, p_cycle_id, p_profile_id, p_handler, v_change->>'trade_id',
                p_client_order_id, true,
                pg_catalog.jsonb_build_object('input', COALESCE(p_evidence, '{}'::jsonb),
                                              'request', p_request, 'change', v_change))
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id INTO v_id;
        IF v_id IS NULL THEN
            SELECT * INTO v_existing FROM recon.corrections WHERE idempotency_key = v_key;
            RETURN recon._already_applied(v_existing, p_handler, p_profile_id);
        END IF;
    END IF;

    RETURN pg_catalog.jsonb_build_object(
        'status', CASE WHEN p_dry_run THEN 'dry_run' ELSE 'applied' END,
        'handler', p_handler, 'idempotency_key', v_key, 'correction_id', v_id,
        'cycle_id', p_cycle_id, 'dry_run', p_dry_run, 'profile_id', p_profile_id,
        'client_order_id', p_client_order_id) || v_change;
END;
$$;
