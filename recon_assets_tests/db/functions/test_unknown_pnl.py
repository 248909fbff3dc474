"""Issue item 9, "unknown is never zero": a fill whose fee has no USD price (core.fees.fee_of:
fee_usd None) leaves its slice's realised PnL unknown, stored as NULL with
trade_history.pnl_unknown_reason = 'fee_unpriced' (migration 0019), and the correction's result
says so and names the fills. Once unknown, later exits (fills, synthetic, backfilled) keep it
unknown. A priced fee is booked as before."""

from decimal import Decimal

import psycopg
import pytest

from recon_assets_tests.db.functions.decisions import recorded_backfill, recorded_exit
from recon_assets_tests.db.functions.test_lifecycle_handlers import (SYMBOL, add_order,
                                                                     add_position, add_slice,
                                                                     call, entry_params,
                                                                     exit_params, one, rows)

pytestmark = pytest.mark.db

AT = "2026-01-01T00:00:00+00:00"


def fill(fill_id, qty, price, *, fee_asset=None, fee_amount=None, fee_usd=None):
    """A fill as the handlers take it; no fee_usd with a fee_amount: a fee recon could not price."""
    out = {"id": fill_id, "qty": qty, "price": price, "filled_at": AT}
    for key, value in (("fee_asset", fee_asset), ("fee_amount", fee_amount),
                       ("fee_usd", fee_usd)):
        if value is not None:
            out[key] = value
    return out


def unpriced(fill_id, qty, price):
    return fill(fill_id, qty, price, fee_asset="XYZ", fee_amount="0.3")


def pnl(db):
    return one(db, "SELECT realised_pnl_usd, pnl_unknown_reason FROM trade_history")


@pytest.fixture
def open_long(db):
    """Trade t1: a long slice of 2 at 100 (PnL known, 0), its position and ledger row, and an
    open EXIT order of 2."""
    add_order(db, "rc.ALP.t1.E1", status="filled", filled="2", avg="100", exchange_id="9001")
    add_slice(db, "t1", entry="2", price="100")
    add_position(db, "long", "2", "100")
    call(db, "recon_recalculate_capital", p_profile_id="alpha")
    add_order(db, "rc.ALP.t1.X1", intent="EXIT", side="sell", qty="2")
    return db


def test_an_exit_fill_with_an_unpriced_fee_leaves_the_pnl_unknown(open_long):
    db = open_long
    result = call(db, "recon_reconcile_exit_fill",
                  **exit_params(fill_list=[unpriced("x1", "2", "110")]))
    assert result["status"] == "applied"
    # The quantities are booked: the slice closes, the position and the reservation go.
    assert one(db, "SELECT status, exit_qty, exit_price FROM trade_history") == ("closed", 2, 110)
    assert rows(db, "SELECT * FROM positions") == [] and rows(db, "SELECT * FROM capital_ledger") == []
    assert rows(db, "SELECT exchange_fill_id, fee_asset, fee_amount, fee_usd FROM applied_fills") == [
        ("x1", "XYZ", Decimal("0.3"), None)]
    # The PnL is unknown, not 20 - 0.
    assert pnl(db) == (None, "fee_unpriced")
    assert result["realised_pnl_usd"] is None
    assert result["fee_usd"] is None and result["unpriced_fees"] == 1
    assert result["pnl_unknown_reason"] == "fee_unpriced"
    assert result["unpriced_fills"] == [{"id": "x1", "fee_asset": "XYZ", "fee_amount": 0.3}]
    assert result["slice"]["after"]["realised_pnl_usd"] is None
    (change,) = one(db, "SELECT evidence->'change' FROM recon.corrections")
    assert change["pnl_unknown_reason"] == "fee_unpriced"


def test_one_unpriced_fee_among_priced_ones_makes_the_exit_pnl_unknown(open_long):
    db = open_long
    result = call(db, "recon_reconcile_exit_fill", **exit_params(fill_list=[
        fill("x1", "1.5", "110", fee_asset="USDT", fee_amount="0.05", fee_usd="0.05"),
        unpriced("x2", "0.5", "110")]))
    assert pnl(db) == (None, "fee_unpriced")
    assert result["fee_usd"] is None and result["unpriced_fees"] == 1
    assert [f["id"] for f in result["unpriced_fills"]] == ["x2"]


def test_a_partial_exit_with_an_unpriced_fee_stays_unknown_after_a_priced_exit(open_long):
    db = open_long
    call(db, "recon_reconcile_exit_fill",
         **exit_params(key="k1", filled="1", avg="120", fill_list=[unpriced("x1", "1", "120")]))
    assert one(db, "SELECT status, virtual_open_qty FROM trade_history") == ("open", 1)
    assert pnl(db) == (None, "fee_unpriced")
    second = call(db, "recon_reconcile_exit_fill", **exit_params(
        key="k2", filled="2", avg="115",
        fill_list=[unpriced("x1", "1", "120"), fill("x2", "1", "110", fee_usd="0.05")]))
    assert second["fills"]["booked"] == ["x2"]
    assert one(db, "SELECT status FROM trade_history") == ("closed",)
    assert pnl(db) == (None, "fee_unpriced")
    assert second["pnl_unknown_reason"] == "fee_unpriced"
    # This fill's own PnL is known; the slice's is not.
    assert Decimal(str(second["realised_pnl_usd"])) == Decimal("9.95")


def test_an_entry_fill_with_an_unpriced_fee_opens_a_slice_with_an_unknown_pnl(db):
    add_order(db, "rc.ALP.t1.E1")
    result = call(db, "recon_reconcile_entry_fill",
                  **entry_params(fill_list=[unpriced("f1", "2", "100")]))
    assert result["status"] == "applied"
    assert one(db, "SELECT entry_qty, entry_price FROM trade_history") == (2, 100)
    assert pnl(db) == (None, "fee_unpriced")
    assert result["fee_usd"] is None and result["pnl_unknown_reason"] == "fee_unpriced"
    assert result["unpriced_fills"] == [{"id": "f1", "fee_asset": "XYZ", "fee_amount": 0.3}]


def test_an_entry_fill_with_an_unpriced_fee_makes_an_open_slices_pnl_unknown(db):
    add_order(db, "rc.ALP.t1.E1")
    add_slice(db, "t1")  # the trading app opened the slice before any fill
    call(db, "recon_reconcile_entry_fill",
         **entry_params(fill_list=[fill("f1", "1.5", "100", fee_usd="0.1"),
                                   unpriced("f2", "0.5", "100")]))
    assert one(db, "SELECT entry_qty FROM trade_history") == (2,)
    assert pnl(db) == (None, "fee_unpriced")


def _entered_with_an_unpriced_fee(db):
    """alpha's trade t1: entered 2 at 100 through a fill whose fee has no price."""
    add_order(db, "rc.ALP.t1.E1")
    call(db, "recon_reconcile_entry_fill", **entry_params(fill_list=[unpriced("f1", "2", "100")]))
    assert pnl(db) == (None, "fee_unpriced")


def test_a_priced_exit_fill_never_turns_an_unknown_pnl_into_a_number(db):
    _entered_with_an_unpriced_fee(db)
    add_order(db, "rc.ALP.t1.X1", intent="EXIT", side="sell", qty="2")
    result = call(db, "recon_reconcile_exit_fill",
                  **exit_params(fill_list=[fill("x1", "2", "110", fee_usd="0.05")]))
    assert one(db, "SELECT status FROM trade_history") == ("closed",)
    assert pnl(db) == (None, "fee_unpriced")
    assert result["pnl_unknown_reason"] == "fee_unpriced"
    assert result["slice"]["after"]["realised_pnl_usd"] is None


def test_a_synthetic_exit_never_turns_an_unknown_pnl_into_a_number(db):
    _entered_with_an_unpriced_fee(db)
    result = call(db, "recon_synthetic_exit", p_profile_id="alpha", p_cycle_id="run-1",
                  p_idempotency_key="synthetic_exit:alpha:t1:1:k", p_trade_id="t1",
                  p_slice_no=1, p_qty="2", p_price="90",
                  p_check_id=recorded_exit(db, key="synthetic_exit:alpha:t1:1:k"))
    assert result["status"] == "applied"
    assert one(db, "SELECT status FROM trade_history") == ("closed",)
    assert pnl(db) == (None, "fee_unpriced")


def test_a_backfilled_exit_never_turns_an_unknown_pnl_into_a_number(db):
    _entered_with_an_unpriced_fee(db)
    db.execute("INSERT INTO recon.exchange_fills (exchange_account, symbol, exchange_fill_id, "
               "exchange_order_id, client_order_id, side, qty, price, fee_usd, fee_asset, "
               "fee_amount, filled_at) VALUES ('acct1', %s, 'b1', '9100', 'web_manual1', "
               "'sell', 2, 110, 0.05, 'USDT', 0.05, '2026-01-01T00:05:00Z')", (SYMBOL,))
    result = call(db, "recon_exit_backfill", p_profile_id="alpha", p_cycle_id="run-1",
                  p_idempotency_key="exit_backfill:alpha:t1:1:b1", p_trade_id="t1",
                  p_slice_no=1, p_symbol=SYMBOL, p_exchange_fill_id="b1",
                  p_decision_id=recorded_backfill(db, "b1"), p_evidence={"decision_id": 1})
    assert result["status"] == "applied"
    assert one(db, "SELECT status FROM trade_history") == ("closed",)
    assert pnl(db) == (None, "fee_unpriced")


def test_a_priced_fee_is_booked_as_before(open_long):
    """A fee in USDT, a fee in BNB priced by the caller, and a zero fee in an asset without a
    price (zero is known: core.fees.fee_of) all keep the PnL a number."""
    db = open_long
    result = call(db, "recon_reconcile_exit_fill", **exit_params(fill_list=[
        fill("x1", "1", "110", fee_asset="USDT", fee_amount="0.05", fee_usd="0.05"),
        fill("x2", "0.5", "110", fee_asset="BNB", fee_amount="0.0001", fee_usd="0.06"),
        fill("x3", "0.5", "110", fee_asset="XYZ", fee_amount="0")]))
    assert pnl(db) == (Decimal("19.89"), None)
    assert Decimal(str(result["realised_pnl_usd"])) == Decimal("19.89")
    assert Decimal(str(result["fee_usd"])) == Decimal("0.11") and result["unpriced_fees"] == 0
    assert result["pnl_unknown_reason"] is None and result["unpriced_fills"] == []


def test_an_unknown_pnl_must_say_why(db):
    """The schema keeps NULL meaning "unknown, and here is why": a NULL without a reason is
    refused."""
    add_slice(db, "t1", entry="1", price="100")
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("UPDATE trade_history SET realised_pnl_usd = NULL")
    db.execute("UPDATE trade_history SET realised_pnl_usd = NULL, "
               "pnl_unknown_reason = 'fee_unpriced'")
    # How an analyst finds them (docs/analyst-guide.md).
    assert rows(db, "SELECT trade_id, slice_no, pnl_unknown_reason FROM trade_history "
                    "WHERE realised_pnl_usd IS NULL") == [("t1", 1, "fee_unpriced")]
