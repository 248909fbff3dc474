"""The EXIT backfill's SQL (recon_exit_backfill, recon_record_backfill_decisions,
recon_review_backfill, recon_add_exit_fill_hint) against the real PostgreSQL: a real fill
booked once at its own price, fee and time; a partial exit leaves the rest open; what the
database contradicts is refused and changes nothing. (SIGKILL mid-apply: test_lifecycle_handlers'
test_sigkill_leaves_the_database_before_or_after_never_in_between[...exit_backfill].)"""

from decimal import Decimal

import psycopg
import pytest

from recon_assets_tests.db.functions.decisions import operator_request, recorded_backfill
from recon_assets_tests.db.functions.test_lifecycle_handlers import (SYMBOL, add_position,
                                                                     add_slice, call, full_state,
                                                                     one, rows)

pytestmark = pytest.mark.db


def stored_fill(db, fill_id, qty, price, *, side="sell", fee="0.05", fee_usd="0.05",
                coid="web_manual1", order="9100"):
    db.execute("INSERT INTO recon.exchange_fills (exchange_account, symbol, exchange_fill_id, "
               "exchange_order_id, client_order_id, side, qty, price, fee_usd, fee_asset, "
               "fee_amount, filled_at) VALUES ('acct1', %s, %s, %s, %s, %s, %s, %s, %s, 'BNB', "
               "%s, '2026-01-01T00:05:00Z')",
               (SYMBOL, fill_id, order, coid, side, Decimal(qty), Decimal(price),
                None if fee_usd is None else Decimal(fee_usd), Decimal(fee)))


@pytest.fixture
def ghost(db):
    """alpha's trade t1: a long slice of 2 at 100 and its position; the exchange closed it."""
    add_slice(db, "t1", entry="2", price="100")
    add_position(db, "long", "2", "100")
    call(db, "recon_recalculate_capital", p_profile_id="alpha")
    return db


def backfill(db, fill_id, key=None, **extra):
    """Book stored fill `fill_id` as t1's exit, with the GO decision it applies recorded
    (p_decision_id) unless one is given."""
    if "p_decision_id" not in extra:
        extra["p_decision_id"] = recorded_backfill(db, fill_id)
    return call(db, "recon_exit_backfill", **{
        "p_profile_id": "alpha", "p_cycle_id": "run-1",
        "p_idempotency_key": key or f"exit_backfill:alpha:t1:1:{fill_id}", "p_trade_id": "t1",
        "p_slice_no": 1, "p_symbol": SYMBOL, "p_exchange_fill_id": fill_id,
        "p_evidence": {"decision_id": 1}, **extra})


def test_a_real_fill_closes_the_slice_at_its_price_and_fee_once(ghost):
    db = ghost
    stored_fill(db, "f1", "2", "110.5", fee_usd="0.06")
    result = backfill(db, "f1")
    assert result["status"] == "applied" and result["handler"] == "exit_backfill"
    assert one(db, "SELECT status, exit_qty, exit_price, realised_pnl_usd, close_reason "
                   "FROM trade_history") == ("closed", 2, Decimal("110.5"), Decimal("20.94"),
                                             "exit_fill_backfilled")
    assert rows(db, "SELECT exchange_fill_id, exchange_order_id, client_order_id, side, qty, "
                    "price, fee_usd, fee_asset, filled_at = '2026-01-01T00:05:00Z' "
                    "FROM applied_fills") == [
        ("f1", "9100", "web_manual1", "sell", 2, Decimal("110.5"), Decimal("0.06"), "BNB", True)]
    assert rows(db, "SELECT * FROM positions") == [] and rows(db, "SELECT * FROM capital_ledger") == []
    # Exactly once: the same key, and the same fill under another key.
    assert backfill(db, "f1")["status"] == "already_applied"
    with pytest.raises(psycopg.Error) as err:
        backfill(db, "f1", key="exit_backfill:alpha:t1:1:other")
    assert err.value.diag.message_detail == "fill_already_booked"
    assert one(db, "SELECT count(*) FROM applied_fills") == (1,)


def test_a_partial_exit_leaves_the_remainder_open_and_reserved(ghost):
    db = ghost
    stored_fill(db, "f1", "0.5", "120")
    backfill(db, "f1")
    assert one(db, "SELECT status, exit_qty, virtual_open_qty FROM trade_history") == (
        "open", Decimal("0.5"), Decimal("1.5"))
    assert one(db, "SELECT side, qty FROM positions") == ("long", Decimal("1.5"))
    assert one(db, "SELECT reserved_usd FROM capital_ledger") == (Decimal("150.00"),)


def test_a_dry_run_records_and_changes_nothing(ghost):
    db = ghost
    stored_fill(db, "f1", "2", "110")
    before = {t: v for t, v in full_state(db).items() if t != "recon.corrections"}
    assert backfill(db, "f1", p_dry_run=True)["status"] == "dry_run"
    assert {t: v for t, v in full_state(db).items() if t != "recon.corrections"} == before
    assert one(db, "SELECT dry_run FROM recon.corrections") == (True,)


@pytest.mark.parametrize("setup,fill_id,detail", [
    ("", "nope", "fill_not_found"),
    ("INSERT INTO applied_fills (exchange_account, symbol, exchange_fill_id, profile_id, side, "
     "qty, price, filled_at) VALUES ('acct1', 'BTC/USDT:USDT', 'f1', 'alpha', 'sell', 2, 110, now())",
     "f1", "fill_already_booked"),
    ("UPDATE recon.exchange_fills SET side = 'buy'", "f1", "fill_does_not_fit"),
    ("UPDATE recon.exchange_fills SET qty = 3", "f1", "fill_does_not_fit"),
    # Hedge mode: a sell on the short leg opened a short; it is no exit of the long slice.
    ("UPDATE recon.exchange_fills SET position_side = 'short'", "f1", "fill_does_not_fit"),
    ("UPDATE recon.exchange_fills SET fee_usd = NULL", "f1", "fee_unpriced"),
    ("UPDATE positions SET qty = 1", "f1", "position_would_flip"),
    ("UPDATE trade_history SET trade_id = 't2'", "f1", "slice_not_found"),
])
def test_what_the_database_contradicts_is_refused_and_changes_nothing(ghost, setup, fill_id,
                                                                      detail):
    db = ghost
    stored_fill(db, "f1", "2", "110")
    if setup:
        db.execute(setup)
    before = full_state(db)
    with pytest.raises(psycopg.Error) as err:
        backfill(db, fill_id)
    assert err.value.sqlstate == "RCREF" and err.value.diag.message_detail == detail
    assert full_state(db) == before


def test_only_a_recorded_go_or_an_approved_pair_is_booked(ghost):
    """Issue 38: the money function trusts the recorded decision, not its caller. No decision,
    a decision about another fill or slice, a NO_GO, a GO not assignable: refused, nothing
    booked. A NO_GO an operator approved (the latest review of the pair) is booked."""
    db = ghost
    stored_fill(db, "f1", "2", "110")
    stored_fill(db, "f2", "2", "111")
    add_slice(db, "t2", entry="1", price="100")
    invented = {
        "no decision named": None,
        "no such decision": 999999,
        "another fill's GO": recorded_backfill(db, "f2"),
        "another slice's GO": recorded_backfill(db, "f1", trade="t2"),
        "a NO_GO": recorded_backfill(db, "f1", decision="NO_GO"),
        "a GO not assignable": recorded_backfill(db, "f1", assignable=False),
    }
    before = full_state(db)
    for why, decision_id in invented.items():
        with pytest.raises(psycopg.Error) as err:
            backfill(db, "f1", p_decision_id=decision_id)
        assert err.value.sqlstate == "RCREF", why
        assert err.value.diag.message_detail == "no_recorded_decision", why
        assert full_state(db) == before, why
    no_go = invented["a NO_GO"]
    operator_request(db, "reject_backfill", "r1")
    operator_request(db, "approve_backfill", "r2")
    call(db, "recon_review_backfill", p_decision_id=no_go, p_verdict="reject",
         p_note="not its exit", p_run_id="r1")
    with pytest.raises(psycopg.Error, match="no recorded backfill decision"):
        backfill(db, "f1", p_decision_id=no_go)
    call(db, "recon_review_backfill", p_decision_id=no_go, p_verdict="approve",
         p_note="the desk closed it from the app", p_run_id="r2")
    assert backfill(db, "f1", p_decision_id=no_go)["status"] == "applied"


def test_a_closed_slice_is_unchanged(ghost):
    db = ghost
    stored_fill(db, "f1", "2", "110")
    db.execute("UPDATE trade_history SET exit_qty = 2, exit_price = 100, status = 'closed', "
               "closed_at = now()")
    assert backfill(db, "f1")["status"] == "unchanged"


def decision_row(**extra):
    return {"symbol": SYMBOL, "exchange_fill_id": "f1", "exchange_order_id": "9100",
            "client_order_id": "web_manual1", "fill_side": "sell", "fill_qty": 2.0,
            "fill_price": 110.0, "fee_usd": 0.05, "filled_at": "2026-01-01T00:05:00+00:00",
            "profile_id": "alpha", "trade_id": "t1", "slice_no": 1, "slice_side": "long",
            "slice_open_qty": 2.0, "slice_opened_at": "2026-01-01T00:00:00+00:00",
            "candidate_slices": ["alpha/t1/1"], "match_mode": "single_open_trade",
            "strong": False, "decision": "NO_GO", "reason": "would match",
            "idempotency_key": "exit_backfill:alpha:t1:1:x", **extra}


def record(db, decisions, cycle="c1"):
    return call(db, "recon_record_backfill_decisions", p_cycle_id=cycle, p_account="acct1",
                p_decisions=decisions, p_run_id=f"{cycle}-attempt-1")


def test_decisions_are_recorded_once_per_cycle_and_never_rewritten(db):
    unmatched = decision_row(exchange_fill_id="f2", profile_id=None, trade_id=None,
                             slice_no=None, match_mode=None, idempotency_key=None)
    assert record(db, [decision_row(), unmatched]) == {
        "recorded": 2, "go": 0, "no_go": 2, "already_recorded": False, "run_id": "c1-attempt-1"}
    # A second attempt of the cycle records nothing and learns which attempt did.
    again = record(db, [decision_row()])
    assert again["already_recorded"] is True and again["run_id"] == "c1-attempt-1"
    assert one(db, "SELECT count(*), count(trade_id) FROM recon.backfill_decisions") == (2, 1)
    with pytest.raises(psycopg.Error, match="append-only"):
        db.execute("UPDATE recon.backfill_decisions SET decision = 'GO'")
    # A GO names a slice and its key.
    with pytest.raises(psycopg.errors.CheckViolation):
        record(db, [{**unmatched, "decision": "GO"}], cycle="c2")


def test_a_review_names_the_pair_needs_a_note_and_a_slice(db):
    record(db, [decision_row(), decision_row(exchange_fill_id="f2", profile_id=None,
                                             trade_id=None, slice_no=None, match_mode=None,
                                             idempotency_key=None)])
    (named, unnamed) = [r[0] for r in rows(db, "SELECT id FROM recon.backfill_decisions ORDER BY id")]
    operator_request(db, "approve_backfill", "r1")
    review = call(db, "recon_review_backfill", p_decision_id=named, p_verdict="approve",
                  p_note="closed from our app by the desk", p_run_id="r1")
    assert review["decision"]["trade_id"] == "t1"
    assert one(db, "SELECT verdict, exchange_fill_id, profile_id, trade_id, slice_no "
                   "FROM recon.backfill_reviews") == ("approve", "f1", "alpha", "t1", 1)
    for decision, verdict, note, message in (
            (named, "maybe", "x", "approve or reject"), (named, "reject", " ", "note"),
            (unnamed, "approve", "x", "names no slice"), (999, "approve", "x", "no backfill decision")):
        with pytest.raises(psycopg.Error, match=message):
            call(db, "recon_review_backfill", p_decision_id=decision, p_verdict=verdict,
                 p_note=note, p_run_id="r1")


def test_a_hint_ties_an_order_to_one_trade(db):
    hint = call(db, "recon_add_exit_fill_hint", p_account="acct1", p_exchange_order_id="9100",
                p_profile_id="alpha", p_trade_id="t1", p_note="desk close", p_added_by="ops")
    assert hint["trade_id"] == "t1"
    assert call(db, "recon_add_exit_fill_hint", p_account="acct1", p_exchange_order_id="9100",
                p_profile_id="alpha", p_trade_id="t1", p_note="again", p_added_by="ops")["id"] == hint["id"]
    with pytest.raises(psycopg.Error, match="hinted to trade t1"):
        call(db, "recon_add_exit_fill_hint", p_account="acct1", p_exchange_order_id="9100",
             p_profile_id="beta", p_trade_id="t9", p_note="x", p_added_by="ops")
    with pytest.raises(psycopg.Error, match="does not trade on account"):
        call(db, "recon_add_exit_fill_hint", p_account="acct2", p_exchange_order_id="1",
             p_profile_id="alpha", p_trade_id="t1", p_note="x", p_added_by="ops")


def _cycle_with_decision(db, cycle, started, decision, *, profile="alpha", trade="t1",
                         assignable=True) -> int:
    """A succeeded cycle of acct1 whose heartbeat ran, and its backfill decision about f1."""
    db.execute("INSERT INTO recon.cycles (cycle_id, exchange_account, started_at, finished_at, "
               "status) VALUES (%s, 'acct1', %s, %s, 'succeeded')", (cycle, started, started))
    db.execute("INSERT INTO recon.parity_checks (cycle_id, exchange_account, profile_id, "
               "trade_id, slice_no, symbol, side, virtual_open_qty, attributable, ghost, "
               "confirmations_required, decision, reason) VALUES (%s, 'acct1', 'alpha', 't1', "
               "1, %s, 'long', 2, true, true, 3, 'backfill', 'r')", (cycle, SYMBOL))
    (decision_id,) = one(db, """
        INSERT INTO recon.backfill_decisions (cycle_id, exchange_account, symbol,
            exchange_fill_id, fill_side, fill_qty, fill_price, filled_at, profile_id, trade_id,
            slice_no, slice_side, match_mode, strong, assignable, decision, reason,
            idempotency_key)
        VALUES (%s, 'acct1', %s, 'f1', 'sell', 2, 110, '2026-01-01T00:05:00Z', %s, %s, 1,
                'long', 'sub_tag', true, %s, %s, 'r', 'exit_backfill:alpha:t1:1:f1')
        RETURNING id""",
                         cycle, SYMBOL, profile, trade, assignable, decision)
    return decision_id


def test_a_decision_a_newer_cycle_superseded_is_not_booked(ghost):
    """Act on the newest evidence: cycle c1 decided GO for f1 -> t1; the newer cycle c2 (its
    backfill and heartbeat ran) decided NO_GO for the same fill. Booking c1's decision is
    unchanged, "superseded"; a decision the newest cycle still makes GO is booked."""
    db = ghost
    stored_fill(db, "f1", "2", "110")
    old = _cycle_with_decision(db, "c1", "2026-01-01T00:10:00Z", "GO")
    _cycle_with_decision(db, "c2", "2026-01-01T00:11:00Z", "NO_GO", assignable=False)
    before = full_state(db)
    result = backfill(db, "f1", p_decision_id=old)
    assert result["status"] == "unchanged" and "superseded" in result["reason"]
    assert "c2" in result["reason"] and full_state(db) == before
    _cycle_with_decision(db, "c3", "2026-01-01T00:12:00Z", "GO")
    assert backfill(db, "f1", p_decision_id=old)["status"] == "applied"
