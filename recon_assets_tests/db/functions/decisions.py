"""Recorded decisions and requests for the money and gate functions' tests. recon_synthetic_exit applies only a
heartbeat check that decided the exit (its key, qty and mark price) and recon_exit_backfill
only a recorded GO (or an approved pair) about the fill and slice (issue 38: evidence, not the
caller); a test records the decision it applies, as a cycle would."""

import itertools

BTC = "BTC/USDT:USDT"
_cycles = itertools.count(1)  # each recorded decision its own cycle (one check per slice each)


def recorded_exit(db, *, key: str, qty: str = "2", price: str = "90", profile: str = "alpha",
                  trade: str = "t1", slice_no: int = 1, symbol: str = BTC,
                  cycle: str | None = None, decision: str = "synthetic_exit",
                  check_id: int | None = None) -> int:
    """A heartbeat check that decided this synthetic exit; its id (p_check_id), `check_id`
    when given."""
    (check_id,) = db.execute(
        "INSERT INTO recon.parity_checks (id, cycle_id, exchange_account, profile_id, trade_id, "
        "slice_no, symbol, side, virtual_open_qty, mark_price, price_source, attributable, "
        "ghost, confirmations_required, decision, reason, idempotency_key) VALUES "
        "(COALESCE(%s, nextval(pg_get_serial_sequence('recon.parity_checks', 'id'))), %s, "
        "'acct1', %s, %s, %s, %s, 'long', %s, %s, 'mark_price', true, true, 3, %s, "
        "'confirmed', %s) RETURNING id",
        (check_id, cycle or f"c-decided-{next(_cycles)}", profile, trade, slice_no, symbol, qty,
         price, decision,
         key if decision == "synthetic_exit" else None)).fetchone()
    return check_id


def recorded_backfill(db, fill_id: str, *, profile: str = "alpha", trade: str = "t1",
                      slice_no: int = 1, symbol: str = BTC, decision: str = "GO",
                      assignable: bool = True, cycle: str | None = None,
                      decision_id: int | None = None) -> int | None:
    """A recorded EXIT backfill decision booking `fill_id` (stored in recon.exchange_fills) as
    an exit of the slice; its id (p_decision_id; `decision_id` when given), or None when recon
    stores no such fill."""
    row = db.execute(
        "INSERT INTO recon.backfill_decisions (id, cycle_id, exchange_account, symbol, "
        "exchange_fill_id, fill_side, fill_qty, fill_price, filled_at, profile_id, trade_id, "
        "slice_no, slice_side, match_mode, strong, assignable, decision, reason, "
        "idempotency_key) SELECT COALESCE(%s, nextval(pg_get_serial_sequence("
        "'recon.backfill_decisions', 'id'))), %s, 'acct1', f.symbol, f.exchange_fill_id, "
        "f.side, f.qty, "
        "f.price, f.filled_at, %s, %s, %s, 'long', 'client_order_id', true, %s, %s, 'r', "
        "%s FROM recon.exchange_fills f WHERE f.exchange_account = 'acct1' AND f.symbol = %s "
        "AND f.exchange_fill_id = %s RETURNING id",
        (decision_id, cycle or f"c-decided-{next(_cycles)}", profile, trade, slice_no,
         assignable, decision,
         f"exit_backfill:{profile}:{trade}:{slice_no}:{fill_id}", symbol, fill_id)).fetchone()
    return row[0] if row else None


def operator_request(db, job: str, run_id: str) -> int:
    """An operator job's recorded launch (what every operator job writes before it acts); the
    pause, resume, review and quarantine functions act only for a run that has one."""
    (action_id,) = db.execute("SELECT recon_record_operator_action(%s, %s, NULL, '{}'::jsonb)",
                              (job, run_id)).fetchone()
    return action_id
