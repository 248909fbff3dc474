"""public.recon_take_order_probes: an account's single-order probes per cycle, shared by every
correction run of that cycle (issue 39)."""

import threading

import psycopg
import pytest

pytestmark = pytest.mark.db


def take(db, account, cycle, wanted, cap):
    return db.execute("SELECT public.recon_take_order_probes(%s, %s, %s, %s)",
                      (account, cycle, wanted, cap)).fetchone()[0]


def test_the_runs_of_a_cycle_share_its_account_s_cap(db):
    assert take(db, "acct1", "c1", 3, 5) == 3
    assert take(db, "acct1", "c1", 4, 5) == 2  # what is left
    assert take(db, "acct1", "c1", 1, 5) == 0
    assert take(db, "acct1", "c2", 4, 5) == 4  # another cycle: its own budget
    assert take(db, "acct2", "c1", 5, 5) == 5  # another account: its own budget
    assert take(db, "acct2", "c1", 0, 5) == 0
    assert take(db, "acct3", "c1", 2, 0) == 0  # a cap of 0 probes nothing
    assert db.execute("SELECT exchange_account, cycle_id, used FROM recon.order_probe_budgets "
                      "ORDER BY 1, 2").fetchall() == [
        ("acct1", "c1", 5), ("acct1", "c2", 4), ("acct2", "c1", 5), ("acct3", "c1", 0)]


@pytest.mark.parametrize("wanted,cap", [(-1, 5), (1, -5), (None, 5), (1, None)])
def test_a_count_below_zero_is_refused(db, wanted, cap):
    with pytest.raises(psycopg.errors.RaiseException, match="counts >= 0"):
        take(db, "acct1", "c1", wanted, cap)


def test_concurrent_runs_never_exceed_the_cap_together(pg_dsn):
    """Ten runs of one cycle ask for 3 probes each at once: 20 are granted, no more."""
    granted = []

    def run():
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            granted.append(take(conn, "acct1", "c1", 3, 20))

    threads = [threading.Thread(target=run) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(granted) == 10 and sum(granted) == 20 and all(0 <= g <= 3 for g in granted)
