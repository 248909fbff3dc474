"""The reconciling gate has one owner, even when restored (issue item 8), against the real
PostgreSQL: a run whose session was ended by someone else (the next cycle restored it as stale,
another run took it over, an operator ended it) is revoked for that profile, so its later money
calls are refused, its end restores nothing and its begin is refused; and a paused profile gets a
session too, so a resume in the middle of its correction restores `reconciling`, not `active`."""

import json

import psycopg
import pytest

from recon_assets_tests.db.functions.decisions import operator_request

from recon_assets_tests.db.functions.test_lifecycle_handlers import (add_order, call,
                                                                    cancel_params, rows)
from recon_assets_tests.db.functions.test_trading_gate import record, verdict

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def operator_runs(db):
    """The operator jobs' recorded requests the pauses and resumes below act for."""
    operator_request(db, "pause_profile", "run-pause")
    operator_request(db, "resume_profile", "run-resume")


def gate(db, profile="alpha"):
    return db.execute("SELECT trading_state, pause_source FROM profiles WHERE id = %s",
                      (profile,)).fetchone()


def session(db, profile="alpha"):
    return rows(db, "SELECT cycle_id FROM recon.reconciling WHERE profile_id = %s", profile)


def revocations(db):
    return rows(db, "SELECT profile_id, cycle_id, revoked_by, why FROM recon.reconciling_revoked "
                    "ORDER BY id")


@pytest.fixture
def open_entry(db):
    """An open ENTRY order of alpha that a cancel correction may mark canceled."""
    add_order(db, "rc.ALP.t1.E1")
    return db


def cancel(db, run, **extra):
    return call(db, "recon_reconcile_cancel",
                **{**cancel_params(p_filled_qty="0", **extra), "p_cycle_id": run})


def refused(db, run, **extra):
    """The cancel of `run`, which must be refused: the error."""
    with pytest.raises(psycopg.Error) as err:
        cancel(db, run, **extra)
    assert err.value.sqlstate == "RCREF"
    return err.value


def order_status(db):
    return db.execute("SELECT status FROM orders WHERE client_order_id = 'rc.ALP.t1.E1'"
                      ).fetchone()[0]


# --- sequence 1: a restored or taken-over session revokes its owner ---------------------------

def test_a_run_whose_old_session_the_next_cycle_restored_corrects_nothing(open_entry):
    """Run R owns alpha's gate; its session grows older than the bound while R still runs, and
    the next cycle restores it (as cycle_start does: end with the owner's id, naming itself).
    R's later correction is refused, naming R and the cycle that restored the gate."""
    db = open_entry
    assert call(db, "recon_begin_reconciling", p_profile_id="alpha",
                p_cycle_id="run-r")["status"] == "began"
    restored = call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-r",
                    p_restored_by="cycle-2")
    assert restored["restored"] is True and gate(db) == ("active", None)
    assert session(db) == []
    assert revocations(db) == [("alpha", "run-r", "cycle-2", "restored")]
    err = refused(db, "run-r")
    assert err.diag.message_detail == "gate_revoked"
    assert "run-r" in err.diag.message_primary and "cycle-2" in err.diag.message_primary
    assert order_status(db) == "open"
    assert rows(db, "SELECT count(*) FROM recon.corrections") == [(0,)]
    # A dry run changes nothing, so it is still recorded as one.
    assert cancel(db, "run-r", p_dry_run=True)["status"] == "dry_run"
    # Another run (the next correction) corrects as before.
    assert cancel(db, "run-next")["status"] == "applied"


def test_a_run_whose_session_was_taken_over_corrects_nothing_even_after_the_new_owner_ended(
        open_entry):
    db = open_entry
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    took = call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-s",
                p_take_over_from="run-r")
    assert took["status"] == "took_over"
    assert revocations(db) == [("alpha", "run-r", "run-s", "taken_over")]
    err = refused(db, "run-r")
    assert err.diag.message_detail == "gate_revoked" and "run-s" in err.diag.message_primary
    # The new owner ends its session: no session is left, and R is still refused.
    assert call(db, "recon_end_reconciling", p_profile_id="alpha",
                p_cycle_id="run-s")["restored"] is True
    assert gate(db) == ("active", None) and session(db) == []
    assert refused(db, "run-r").diag.message_detail == "gate_revoked"
    assert order_status(db) == "open"


def test_a_revoked_run_neither_ends_nor_begins_the_gate_again(open_entry):
    db = open_entry
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-r",
         p_restored_by="cycle-2")
    # The next correction run owns the gate now; R's late end leaves it alone.
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-s")
    late = call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    assert late["restored"] is False and late["revoked"] is True
    assert gate(db) == ("reconciling", None) and session(db) == [("run-s",)]
    call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-s")
    # R cannot begin again as if nothing happened: refused, nothing changes.
    again = call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    assert again["status"] == "revoked"
    assert (again["revoked_by"], again["why"]) == ("cycle-2", "restored")
    assert gate(db) == ("active", None) and session(db) == []
    # Not even by naming a take-over.
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-t")
    assert call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r",
                p_take_over_from="run-t")["status"] == "revoked"
    assert session(db) == [("run-t",)]


def test_a_restore_is_idempotent_and_an_owners_own_end_revokes_nothing(open_entry):
    db = open_entry
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    assert revocations(db) == []
    assert cancel(db, "run-r")["status"] == "applied"
    # The restoring call sent twice (a lost answer): one revocation, nothing else.
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-u")
    for _ in range(2):
        again = call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-u",
                     p_restored_by="cycle-3")
    assert again["restored"] is False and gate(db) == ("active", None)
    assert revocations(db) == [("alpha", "run-u", "cycle-3", "restored")]


def test_an_operators_end_revokes_the_owner(open_entry):
    db = open_entry
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    assert call(db, "recon_end_reconciling", p_profile_id="alpha")["restored"] is True
    assert revocations(db) == [("alpha", "run-r", None, "restored")]
    err = refused(db, "run-r")
    assert err.diag.message_detail == "gate_revoked" and "operator" in err.diag.message_primary


def test_a_revoked_runs_resend_of_an_applied_correction_is_already_applied(open_entry):
    """call_under_lock sends a call whose connection broke once more and believes the answer:
    a correction R applied before its gate was restored is `already_applied`, not refused."""
    db = open_entry
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    assert cancel(db, "run-r")["status"] == "applied"
    call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-r",
         p_restored_by="cycle-2")
    assert cancel(db, "run-r")["status"] == "already_applied"


def test_a_revocation_is_for_its_profile_only(db):
    add_order(db, "rc.BET.b1.E1", trade="b1", profile="beta")
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-r",
         p_restored_by="cycle-2")
    assert call(db, "recon_reconcile_cancel",
                **{**cancel_params(coid="rc.BET.b1.E1", p_filled_qty="0"),
                   "p_profile_id": "beta", "p_cycle_id": "run-r"})["status"] == "applied"


def test_the_revocations_are_append_only(db):
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-r",
         p_restored_by="cycle-2")
    for statement in ("DELETE FROM recon.reconciling_revoked",
                      "UPDATE recon.reconciling_revoked SET cycle_id = 'x'"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            db.execute(statement)


# --- sequence 2: a paused profile corrected, then resumed -------------------------------------

@pytest.mark.parametrize("resume", ["operator", "auto"])
def test_a_resume_during_the_correction_of_a_paused_profile_restores_reconciling(db, resume):
    record(db, "c1", verdict("alpha", True))
    assert gate(db) == ("paused", "parity_watchdog")
    began = call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    assert (began["status"], began["trading_state"]) == ("began", "paused")
    assert gate(db) == ("paused", "parity_watchdog") and session(db) == [("run-r",)]
    if resume == "operator":
        db.execute("SELECT recon_resume_profile('alpha', 'explained', 'run-resume')")
    else:
        paused_at, last = db.execute("SELECT paused_at, last_auto_resume_at FROM profiles "
                                     "WHERE id = 'alpha'").fetchone()
        done = db.execute("SELECT recon_auto_resume('alpha', 'c3', 'run-3', %s, %s, %s::jsonb)",
                          (paused_at, last, json.dumps({"summary": "clean"}))).fetchone()[0]
        assert done["status"] == "applied"
    assert gate(db) == ("reconciling", None)
    assert db.execute("SELECT recon_may_trade('alpha')").fetchone() == (False,)
    # Another run may not correct it meanwhile, and the owner's end restores trading.
    assert call(db, "recon_begin_reconciling", p_profile_id="alpha",
                p_cycle_id="run-s")["status"] == "busy"
    assert call(db, "recon_end_reconciling", p_profile_id="alpha",
                p_cycle_id="run-r")["restored"] is True
    assert gate(db) == ("active", None) and session(db) == []


def test_end_leaves_a_still_paused_profile_paused(open_entry):
    db = open_entry
    db.execute("SELECT recon_pause_profile('alpha', 'maintenance', 'run-pause')")
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    # Only the owner corrects the paused profile while its session is open.
    assert refused(db, "run-s").diag.message_detail == "gate_owned_by_another_run"
    assert cancel(db, "run-r")["status"] == "applied"
    ended = call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    assert ended["restored"] is False
    assert gate(db) == ("paused", "operator") and session(db) == []


def test_a_stale_session_of_a_paused_profile_is_cleared_and_stays_paused(db):
    db.execute("SELECT recon_pause_profile('alpha', 'maintenance', 'run-pause')")
    call(db, "recon_begin_reconciling", p_profile_id="alpha", p_cycle_id="run-r")
    ended = call(db, "recon_end_reconciling", p_profile_id="alpha", p_cycle_id="run-r",
                 p_restored_by="cycle-2")
    assert ended["restored"] is False
    assert gate(db) == ("paused", "operator") and session(db) == []
    assert revocations(db) == [("alpha", "run-r", "cycle-2", "restored")]
