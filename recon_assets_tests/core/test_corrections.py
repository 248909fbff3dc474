"""The pure correction decisions of recon_assets.core.corrections: which lifecycle handler, with
which arguments and which idempotency key, from one targeted probe; unit and property tests."""

import json
import random
import string
from decimal import Decimal

import ccxt
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_assets.core.corrections import (
    CANCEL,
    ENTRY_FILL,
    EXIT_FILL,
    HANDLERS,
    NONE,
    CorrectionDecision,
    ProbeFailure,
    decide_missing_from_exchange,
    decide_missing_in_db,
    idempotency_key,
    pg_locks_ids,
    profile_lock_key,
    sql_call,
)
from recon_assets_tests.harness.examples import examples

pytestmark = pytest.mark.unit


def order(**over):
    base = {"profile_id": "alpha", "trade_id": "t1", "client_order_id": "rc.ALP.t1.E1",
            "intent": "ENTRY", "side": "buy", "qty": 2.0, "filled_qty": 0.0,
            "exchange_order_id": "9001", "symbol": "BTC/USDT:USDT", "status": "open"}
    return {**base, **over}


def probe(**over):
    base = {"id": "9001", "clientOrderId": "rc.ALP.t1.E1", "status": "closed", "filled": 2.0,
            "average": 100.0, "amount": 2.0, "symbol": "BTC/USDT:USDT", "side": "buy"}
    return {**base, **over}


def trade(fill_id, amount, price=100.0, **over):
    base = {"id": fill_id, "order": "9001", "amount": amount, "price": price, "side": "buy",
            "timestamp": 1767225600000, "fee": {"cost": 0.01, "currency": "USDT"}}
    return {**base, **over}


TWO_FILLS = [trade("f1", 1.5), trade("f2", 0.5)]


def decide(o=None, p=None, fills=TWO_FILLS, **kw):
    return decide_missing_from_exchange(order() if o is None else o,
                                        probe() if p is None else p, fills,
                                        cycle_id=kw.pop("cycle_id", "run-1"), **kw)


# --- routing ---------------------------------------------------------------------------------

def test_filled_entry_order_is_an_entry_fill_with_everything_the_sql_needs():
    d = decide(evidence={"snapshot_run": "run-0"})
    assert d.handler == ENTRY_FILL and d.actionable
    assert d.sql_function == "recon_reconcile_entry_fill"
    assert d.runbook_name == "reconcileEntryFill"
    assert d.reason == "exchange_closed_fully_filled"
    p = d.params
    assert p["p_profile_id"] == "alpha" and p["p_cycle_id"] == "run-1"
    assert p["p_idempotency_key"] == d.idempotency_key
    assert p["p_client_order_id"] == "rc.ALP.t1.E1" and p["p_exchange_order_id"] == "9001"
    assert (p["p_filled_qty"], p["p_avg_fill_price"], p["p_final_status"]) == ("2", "100", None)
    assert p["p_dry_run"] is False
    assert p["p_fills"] == [
        {"id": "f1", "qty": "1.5", "price": "100", "fee_asset": "USDT", "fee_amount": "0.01",
         "fee_usd": "0.01", "filled_at": "2026-01-01T00:00:00+00:00"},
        {"id": "f2", "qty": "0.5", "price": "100", "fee_asset": "USDT", "fee_amount": "0.01",
         "fee_usd": "0.01", "filled_at": "2026-01-01T00:00:00+00:00"}]
    ev = p["p_evidence"]
    assert ev["snapshot_run"] == "run-0" and ev["rule"] == d.reason
    assert ev["db_order"]["client_order_id"] == "rc.ALP.t1.E1"
    assert ev["probe"]["status"] == "closed" and ev["fills"] == p["p_fills"]
    json.dumps(p)  # JSON-safe, as rpc() needs


def test_filled_exit_order_is_an_exit_fill():
    d = decide(order(intent="EXIT", side="sell", client_order_id="rc.ALP.t1.X1"),
               probe(clientOrderId="rc.ALP.t1.X1", side="sell", average=None),
               [trade("x1", 2.0, 110.0, side="sell")])
    assert d.handler == EXIT_FILL
    assert d.params["p_avg_fill_price"] == "110"  # from the fills when the probe has none
    assert d.params["p_close_reason"] == "reconciled_exit_fill"


def test_fills_default_to_the_probes_trades():
    d = decide_missing_from_exchange(order(), probe(trades=TWO_FILLS), cycle_id="run-1")
    assert d.handler == ENTRY_FILL and len(d.params["p_fills"]) == 2


def test_canceled_without_new_fills_is_a_cancel():
    d = decide(p=probe(status="canceled", filled=0.0), fills=[])
    assert d.handler == CANCEL and d.reason == "exchange_canceled"
    assert d.params["p_final_status"] == "canceled" and d.params["p_filled_qty"] == "0"
    assert "p_fills" not in d.params


def test_expired_after_a_booked_partial_fill_is_a_cancel_with_that_status():
    d = decide(order(filled_qty=0.5, status="partially_filled"),
               probe(status="expired", filled=0.5), fills=[])
    assert (d.handler, d.params["p_final_status"], d.params["p_filled_qty"]) == (
        CANCEL, "expired", "0.5")


def test_canceled_after_an_unbooked_partial_fill_books_the_fill_first():
    d = decide(p=probe(status="canceled", filled=0.5, average=101.0),
               fills=[trade("f1", 0.5, 101.0)])
    assert d.handler == ENTRY_FILL and d.params["p_final_status"] == "canceled"
    assert d.reason == "exchange_canceled_partially_filled"


def test_closed_with_the_fill_already_booked_sets_the_status_only():
    d = decide(order(filled_qty=2.0, avg_fill_price=100.0), probe(average=None), fills=[])
    assert d.handler == ENTRY_FILL and d.params["p_fills"] == []
    assert d.params["p_avg_fill_price"] == "100"


@pytest.mark.parametrize("o,p,fills,reason", [
    (order(), probe(status="open", filled=0.0), [], "exchange_reports_open"),
    (order(), probe(status="open", filled=1.0), [trade("f1", 1.0)], "exchange_reports_open"),
    (order(), probe(status="weird"), TWO_FILLS, "unknown_probe_status"),
    (order(), probe(status=None), TWO_FILLS, "unknown_probe_status"),
    (order(), probe(filled=None), TWO_FILLS, "incomplete_probe"),
    (order(), probe(clientOrderId="rc.ALP.t9.E1"), TWO_FILLS, "probe_mismatch"),
    (order(), probe(id="777"), TWO_FILLS, "probe_mismatch"),
    (order(), probe(filled=3.0), TWO_FILLS, "exchange_filled_exceeds_order_qty"),
    (order(filled_qty=1.0), probe(status="canceled", filled=0.5), [],
     "exchange_filled_less_than_database"),
    (order(), probe(status="rejected", filled=1.0), [trade("f1", 1.0)], "inconsistent_probe"),
    (order(), probe(filled=1.0), [trade("f1", 1.0)], "closed_but_not_fully_filled"),
    (order(), probe(), [], "fills_missing"),
    (order(), probe(), [trade("f1", 1.5)], "fills_do_not_add_up"),
    (order(), probe(), [trade("f1", 1.5), trade("f1", 0.5)], "duplicate_fill_ids"),
    (order(), probe(), [trade("f1", 1.5), trade("f2", 0.5, order="777")],
     "fill_of_another_order"),
    (order(), probe(), [trade("f1", 1.5), trade("f2", 0.5, side="sell")], "fill_side_mismatch"),
    (order(), probe(), [trade("f1", 1.5), trade("f2", 0.5, price=None)], "incomplete_fill"),
    (order(), probe(average=None), [], "fills_missing"),
])
def test_doubtful_evidence_decides_nothing(o, p, fills, reason):
    d = decide(o, p, fills)
    assert (d.handler, d.reason) == (NONE, reason)
    assert d.idempotency_key is None and not d.params and not d.actionable
    assert d.client_order_id == o["client_order_id"] and d.profile_id == "alpha"


# --- probe failures --------------------------------------------------------------------------

@pytest.mark.parametrize("exc,kind", [
    (ccxt.NetworkError("reset"), "network_error"),
    (ccxt.RequestTimeout("timed out"), "network_error"),
    (ccxt.RateLimitExceeded("429"), "network_error"),
    (ccxt.ExchangeNotAvailable("503"), "network_error"),
    (ccxt.DDoSProtection("418"), "network_error"),
    (TimeoutError("socket"), "network_error"),
    (ccxt.OrderNotFound("-2013 Order does not exist"), "not_found"),
    (ccxt.AuthenticationError("bad key"), "error"),
    (ValueError("bad json"), "error"),
])
def test_probe_exceptions_are_classified(exc, kind):
    assert ProbeFailure.from_exception(exc).kind == kind
    assert ProbeFailure.from_exception(exc, full_history=True).full_history is (kind == "not_found")


def test_unknown_failure_kinds_are_refused():
    with pytest.raises(ValueError, match="network_error, not_found or error"):
        ProbeFailure("timeout")


def test_not_found_with_full_history_cancels_an_order_with_nothing_booked():
    d = decide(p=ProbeFailure("not_found", "gone", full_history=True), fills=[])
    assert (d.handler, d.reason) == (CANCEL, "not_found_with_full_history")
    assert d.params["p_final_status"] == "canceled"
    booked = decide(order(filled_qty=0.5), ProbeFailure("not_found", full_history=True), [])
    assert (booked.handler, booked.reason) == (NONE, "not_found_but_database_booked_fills")


ids = st.text(alphabet=string.ascii_letters + string.digits + "_-.:", min_size=1, max_size=12)
qtys = st.decimals(min_value=Decimal("0.001"), max_value=Decimal("1000"), places=3)


@st.composite
def db_orders(draw):
    return order(profile_id=draw(ids), trade_id=draw(ids), client_order_id=draw(ids),
                 exchange_order_id=draw(st.none() | ids),
                 intent=draw(st.sampled_from(["ENTRY", "EXIT"])),
                 side=draw(st.sampled_from(["buy", "sell"])), qty=str(draw(qtys)),
                 filled_qty="0")


@given(o=db_orders(), message=st.text(max_size=30),
       kind=st.sampled_from(["network_error", "error", "not_found"]),
       full_history=st.booleans())
def test_a_failed_probe_never_decides_a_correction(o, message, kind, full_history):
    """Network errors decide nothing; "not found" decides only with full-history evidence."""
    d = decide(o, ProbeFailure(kind, message, full_history=full_history), [])
    if kind == "not_found" and full_history:
        assert d.handler == CANCEL
    else:
        assert d.handler == NONE and d.idempotency_key is None and not d.params
        assert d.reason in ("probe_network_error", "probe_failed",
                            "probe_not_found_without_full_history")
        assert d.detail == message


# --- determinism and keys --------------------------------------------------------------------

@st.composite
def filled_scenarios(draw):
    parts = draw(st.lists(qtys, min_size=1, max_size=5))
    filled = sum(parts)
    extra = draw(st.sampled_from([Decimal(0), Decimal("0.5")]))
    status = "closed" if extra == 0 else draw(st.sampled_from(["canceled", "expired"]))
    side = draw(st.sampled_from(["buy", "sell"]))
    fill_ids = draw(st.lists(ids, min_size=len(parts), max_size=len(parts), unique=True))
    o = order(profile_id=draw(ids), trade_id=draw(ids), client_order_id=draw(ids), side=side,
              intent=draw(st.sampled_from(["ENTRY", "EXIT"])), exchange_order_id="E1",
              qty=str(filled + extra))
    p = probe(id="E1", clientOrderId=o["client_order_id"], status=status, filled=str(filled),
              average=None, side=side)
    fills = [trade(i, str(q), price=str(draw(qtys)), side=side, order="E1")
             for i, q in zip(fill_ids, parts)]
    return o, p, fills, draw(st.randoms())


@settings(max_examples=examples(150))
@given(scenario=filled_scenarios())
def test_the_same_evidence_always_yields_the_same_decision_and_key(scenario):
    o, p, fills, rnd = scenario
    first = decide(o, p, fills)
    assert first.handler == (ENTRY_FILL if o["intent"] == "ENTRY" else EXIT_FILL)
    shuffled = list(fills)
    rnd.shuffle(shuffled)
    # Same evidence, told differently: shuffled fills, floats instead of strings, another cycle,
    # a dry run. The key, and everything but cycle/dry-run, stays the same.
    as_floats = [{**f, "amount": float(f["amount"])} for f in shuffled]
    again = decide(o, p, as_floats, cycle_id="run-2", dry_run=True)
    assert again.idempotency_key == first.idempotency_key
    assert {k: v for k, v in again.params.items() if k not in ("p_cycle_id", "p_dry_run")} == {
        k: v for k, v in first.params.items() if k not in ("p_cycle_id", "p_dry_run")}
    assert decide(o, p, fills) == first
    assert not first.idempotency_key.endswith(":dry-run")


@settings(max_examples=examples(100))
@given(scenario=filled_scenarios(), more=qtys)
def test_more_evidence_about_an_order_gets_a_new_key(scenario, more):
    o, p, fills, _ = scenario
    first = decide(o, p, fills)
    grown_o = {**o, "qty": str(Decimal(o["qty"]) + more)}
    grown_p = {**p, "filled": str(Decimal(p["filled"]) + more)}
    grown = decide(grown_o, grown_p, fills + [trade("late fill", str(more), side=o["side"],
                                                    order="E1")])
    assert grown.handler == first.handler
    assert grown.idempotency_key != first.idempotency_key


key_parts = st.tuples(st.sampled_from(HANDLERS), ids, ids, ids,
                      st.lists(ids, max_size=3, unique=True), st.sampled_from(["", "a", "b:c"]))


@settings(max_examples=examples(300))
@given(a=key_parts, b=key_parts)
def test_keys_never_collide_between_different_corrections(a, b):
    def canonical(parts):
        handler, profile, trade_id, coid, fill_ids, qualifier = parts
        return handler, profile, trade_id, coid, tuple(sorted(fill_ids)), qualifier

    ka, kb = idempotency_key(*a), idempotency_key(*b)
    assert (ka == kb) == (canonical(a) == canonical(b))


def test_keys_are_unambiguous_where_joining_with_colons_would_not_be():
    assert idempotency_key(CANCEL, "a:b", "t", "c") != idempotency_key(CANCEL, "a", "t", "b:c")
    assert idempotency_key(CANCEL, "p", "t", "c", ["1", "2"]) != idempotency_key(
        CANCEL, "p", "t", "c", ["1,2"])
    assert idempotency_key(ENTRY_FILL, "p", "t", "c") != idempotency_key(EXIT_FILL, "p", "t", "c")
    assert idempotency_key(ENTRY_FILL, "p", "t", "c", ["2", "1"]) == idempotency_key(
        ENTRY_FILL, "p", "t", "c", ["1", "2", "1"])
    with pytest.raises(ValueError, match="unknown handler"):
        idempotency_key("adopt", "p", "t", "c")


def test_a_pandas_row_is_a_valid_order():
    frame = pd.DataFrame([order(exchange_order_id=None, filled_qty=0)])
    frame["qty"] = frame["qty"].astype("float64")
    row = frame.iloc[0]
    d = decide(row.to_dict(), probe(), TWO_FILLS)
    assert d.handler == ENTRY_FILL and d.params["p_exchange_order_id"] == "9001"
    assert d.idempotency_key == decide(order(exchange_order_id=None), probe(), TWO_FILLS
                                       ).idempotency_key
    json.dumps(d.params)


def test_an_order_without_its_identity_is_a_programming_error():
    with pytest.raises(ValueError, match="lacks trade_id"):
        decide(order(trade_id=None))
    with pytest.raises(ValueError, match="intent must be ENTRY or EXIT"):
        decide(order(intent="BOTH"))


# --- missing in the database -----------------------------------------------------------------

PROFILES = {"ALP": "alpha", "BET": "beta"}


def test_attributable_order_missing_in_db_is_flagged_not_adopted():
    d = decide_missing_in_db({"client_order_id": "rc.ALP.t7.X2", "id": "5"}, PROFILES)
    assert (d.handler, d.reason) == (NONE, "attributable_missing_in_db_flagged")
    assert (d.profile_id, d.trade_id, d.client_order_id) == ("alpha", "t7", "rc.ALP.t7.X2")
    assert not d.actionable and d.idempotency_key is None
    ccxt_shaped = decide_missing_in_db({"clientOrderId": "rc.BET.b1.E1"}, PROFILES)
    assert (ccxt_shaped.reason, ccxt_shaped.profile_id) == ("attributable_missing_in_db_flagged",
                                                            "beta")


@pytest.mark.parametrize("coid", ["web_abc123", "rc.ZZZ.t1.E1", "rc.ALP.t1", None, ""])
def test_foreign_order_missing_in_db_is_only_reported(coid):
    d = decide_missing_in_db({"client_order_id": coid}, PROFILES)
    assert (d.handler, d.reason, d.profile_id) == (NONE, "foreign_order_reported", None)


# --- calling the SQL, and the lock key -------------------------------------------------------

def test_sql_call_names_every_argument_and_casts_the_json_ones():
    d = decide()
    query, params = sql_call(d)
    assert query.startswith("SELECT public.recon_reconcile_entry_fill(")
    assert "p_fills => %(p_fills)s::jsonb" in query
    assert "p_evidence => %(p_evidence)s::jsonb" in query
    assert set(params) == set(d.params)
    assert json.loads(params["p_fills"]) == d.params["p_fills"]
    with pytest.raises(ValueError, match="applies nothing"):
        sql_call(CorrectionDecision(NONE, "exchange_reports_open"))


@given(profile_id=st.text(min_size=1, max_size=40))
def test_lock_key_is_a_signed_bigint_split_the_way_pg_locks_shows_it(profile_id):
    key = profile_lock_key(profile_id)
    assert -(2 ** 63) <= key < 2 ** 63
    assert key == profile_lock_key(profile_id)
    classid, objid = pg_locks_ids(key)
    assert 0 <= classid < 2 ** 32 and 0 <= objid < 2 ** 32
    unsigned = (classid << 32) | objid
    assert (unsigned - 2 ** 64 if unsigned >= 2 ** 63 else unsigned) == key


def test_lock_keys_differ_between_profiles():
    profiles = {f"profile-{i}" for i in range(2000)} | {"alpha", "Alpha", "alpha "}
    assert len({profile_lock_key(p) for p in profiles}) == len(profiles)
    with pytest.raises(ValueError):
        profile_lock_key("")


def test_random_shuffles_of_real_looking_fills_keep_the_key():
    rnd = random.Random(7)
    fills = [trade(str(1000 + i), 0.25) for i in range(8)]
    o = order(qty=2.0)
    keys = set()
    for _ in range(20):
        rnd.shuffle(fills)
        keys.add(decide(o, probe(average=100.0), list(fills)).idempotency_key)
    assert len(keys) == 1


def test_fills_can_be_exchange_fills_snapshot_rows():
    """Rows of the exchange_fills snapshot (frames.EXCHANGE_FILLS columns) are evidence too."""
    rows = [{"account": "acct1", "symbol": "BTC/USDT:USDT", "exchange_fill_id": i,
             "exchange_order_id": "9001", "client_order_id": "rc.ALP.t1.E1", "side": "buy",
             "qty": q, "price": 100.0, "fee_usd": 0.02, "notional_usd": q * 100,
             "filled_at": pd.Timestamp("2026-01-01T00:00:00Z"), "fetched_at": pd.Timestamp.now("UTC")}
            for i, q in (("11", 1.5), ("12", 0.5))]
    d = decide(fills=rows)
    assert d.handler == ENTRY_FILL
    assert d.params["p_fills"] == [
        {"id": "11", "qty": "1.5", "price": "100", "fee_usd": "0.02",
         "filled_at": "2026-01-01T00:00:00+00:00"},
        {"id": "12", "qty": "0.5", "price": "100", "fee_usd": "0.02",
         "filled_at": "2026-01-01T00:00:00+00:00"}]
    other = decide(fills=[{**rows[0], "client_order_id": "rc.ALP.t2.E1"}, rows[1]])
    assert (other.handler, other.reason) == (NONE, "fill_of_another_order")


# --- when a correction is not applied ----------------------------------------------------------

class _Diag:
    def __init__(self, detail=None):
        self.message_detail = detail


class _SqlError(Exception):
    """Stands in for a psycopg error: core classifies by SQLSTATE only (it imports no psycopg)."""

    def __init__(self, message, sqlstate, detail=None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.diag = _Diag(detail)


@pytest.mark.parametrize("exc,outcome,reason", [
    (_SqlError("x contradicts itself", "RCREF", "fills_contradict_order"), "refused",
     "fills_contradict_order"),
    (_SqlError("illegal transition", "P0001"), "refused", "refused_by_handler"),
    (_SqlError("violates check", "23514"), "refused", "constraint_violated"),
    (ValueError("order lacks qty"), "refused", "bad_order_row"),
    (_SqlError("connection lost", "08006"), "failed", "unexpected_error"),
    (RuntimeError("boom"), "failed", "unexpected_error"),
])
def test_why_a_correction_was_not_applied(exc, outcome, reason):
    from recon_assets.core.corrections import refusal_of

    refusal = refusal_of(exc)
    assert (refusal.outcome, refusal.reason) == (outcome, reason)
    assert str(exc).splitlines()[0] in refusal.message


def test_which_lock_a_timeout_waited_for():
    from recon_assets.core.corrections import lock_wait_of

    advisory = ('SQL statement "SELECT pg_catalog.pg_advisory_xact_lock(public.recon_profile_lock_'
                'key(p_profile_id))"\nPL/pgSQL function recon._lock_profile(text) line 6 at PERFORM')
    row = ('while locking tuple (0,3) in relation "orders"\nSQL statement "SELECT * FROM '
           'public.orders WHERE client_order_id = p_client_order_id FOR UPDATE"')
    assert lock_wait_of(advisory) == ("reconciliation_lock", "profile")
    assert lock_wait_of(row) == ("row_lock", "orders")
    assert lock_wait_of(None) == ("row_lock", None)


def test_a_triggered_conditional_order_is_probed_as_the_order_it_became():
    """Issue 15: the database holds the algo order (its id an algoId); the probe is the regular
    order it triggered, whose fills are its fills. Booked under the database's order id."""
    fills = [trade("f1", 1.5, order="555"), trade("f2", 0.5, order="555")]
    d = decide(p=probe(id="555", algoId="9001"), fills=fills)
    assert d.actionable and d.reason == "exchange_closed_fully_filled"
    assert d.params["p_exchange_order_id"] == "9001"
    assert d.params["p_evidence"]["triggered_as_order"] == "555"
    # Without the link it is another order: refused as before.
    assert decide(p=probe(id="555"), fills=fills).reason == "probe_mismatch"
    assert decide(p=probe(id="555", algoId="42"), fills=fills).reason == "probe_mismatch"


@pytest.mark.parametrize("age_days,filled,beyond", [
    (2, 0, False), (4, 0, True), (4, 1, False), (89, 1, False), (91, 1, True), (91, 0, True)])
def test_beyond_query_retention_follows_binances_two_limits(age_days, filled, beyond):
    from recon_assets.core.corrections import beyond_query_retention

    now = 1_800_000_000_000
    assert beyond_query_retention(now - age_days * 86_400_000, now, filled) is beyond


def test_not_found_beyond_retention_is_its_own_reason_and_never_an_action():
    d = decide(p=ProbeFailure("not_found", "OrderNotFound", full_history=True,
                              beyond_retention=True))
    assert not d.actionable and d.reason == "beyond_exchange_query_retention"


def test_refusals_back_off_from_the_second_doubling_up_to_the_cap():
    from datetime import datetime, timedelta, timezone

    from recon_assets.core.corrections import retry_after_refusals
    t = datetime(2026, 12, 1, tzinfo=timezone.utc)
    waits = {n: retry_after_refusals(n, t) for n in (0, 1, 2, 3, 4, 6, 7, 500)}
    assert waits[0] is None and waits[1] is None
    assert {n: (w - t).total_seconds() for n, w in waits.items() if w is not None} == {
        2: 60, 3: 120, 4: 240, 6: 960, 7: 1800, 500: 1800}
    assert retry_after_refusals(3, None) is None  # no time of the last refusal: no wait
    assert retry_after_refusals(2, t) == t + timedelta(seconds=60)
