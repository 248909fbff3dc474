"""The real evidence waiting to be booked (core.evidence): which slices it holds back from a
synthetic exit, and why."""

import pandas as pd
import pytest

from recon_assets.core import frames as F
from recon_assets.core.evidence import pending_evidence
from recon_assets.core.parity import ParityPolicy
from recon_assets.core.rules import NO_GO, SYNTHETIC_EXIT
from recon_assets_tests.core.test_backfill import fill, flat, run as backfill
from recon_assets_tests.core.test_diff import READ_AT, profile, trade_slice
from recon_assets_tests.core.test_parity import one, run as heartbeat

pytestmark = pytest.mark.unit


def evidence_of(slices, decisions):
    return pending_evidence(
        slices=pd.DataFrame(slices, columns=list(F.DB_TRADE_SLICES)),
        profiles=pd.DataFrame([profile("p1"), profile("p2")], columns=list(F.DB_PROFILES)),
        orders=pd.DataFrame([], columns=list(F.DB_ORDERS)),
        fills=pd.DataFrame([], columns=list(F.EXCHANGE_FILLS)), booked=[], hedged=False,
        backfill=decisions, db_read_at=READ_AT, recency_guard_s=5.0)


def test_a_heuristic_s_pick_awaiting_an_operator_holds_every_slice_the_fill_could_have_closed():
    """A web-UI close (one unattributed fill of 0.3) ended p1's T1 (0.2) and part of p2's T2
    (0.3, of which 0.1 had exited behind the database): the exchange is flat. `qty_unique`
    proposes T2 for the fill (its size matches), NO_GO for an operator. That is a guess: the
    fill may as well be T1's exit, so T1 waits for the operator too, never closed at the mark
    while the real fill sits unbooked."""
    slices = [trade_slice("p1", "t1", 0.2), trade_slice("p2", "t2", 0.3)]
    result = backfill(slices, flat(), [fill(0.3, coid="web_close")])
    (row,) = result.decisions.to_dict("records")
    assert (row["decision"], row["match_mode"], row["trade_id"]) == (NO_GO, "qty_unique", "t2")
    evidence = evidence_of(slices, result.decisions)
    assert "NO_GO awaiting an operator" in evidence.hold_reason(("p2", "t2", 1))
    assert "could be its exit" in evidence.hold_reason(("p1", "t1", 1))
    checks = heartbeat(slices, flat(), evidence=evidence,
                       policy=ParityPolicy(1, require_attribution=True, dry_run=False))
    assert [one(checks, t)["decision"] for t in ("t1", "t2")] == ["held", "held"]
    assert SYNTHETIC_EXIT not in set(checks["decision"])


def test_a_strong_pick_holds_only_the_slice_its_id_names():
    """A fill whose client order id is T2's EXIT id is T2's alone, even NO_GO (it overflows T2's
    open qty): T1 is not held by it."""
    slices = [trade_slice("p1", "t1", 0.2), trade_slice("p2", "t2", 0.3)]
    result = backfill(slices, flat(), [fill(0.4, coid="rc.P2.t2.X1")])
    (row,) = result.decisions.to_dict("records")
    assert (row["decision"], row["match_mode"], row["trade_id"]) == (NO_GO, "client_order_id",
                                                                     "t2")
    evidence = evidence_of(slices, result.decisions)
    assert evidence.hold_reason(("p2", "t2", 1))
    assert evidence.hold_reason(("p1", "t1", 1)) is None
