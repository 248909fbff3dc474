"""The soak (issue 18): the whole loop for many rounds, with drift arriving behind the database's
back and exchange faults, database faults and run-worker kills injected at set rates, seeded.

Each round, before the loop runs: a stand-in trading app (this process, like demo.py's) may
place an ENTRY order and let the exchange fill it unseen, fill one partially (the rest next
round), cancel one on the exchange, leave a foreign order from the web UI, close a position from
the web UI behind the database a moment ago (its real fill waits for an operator: the slice is
held, never closed at the mark), or close one before the exchange's trade history begins (no
real fill to book: a ghost the heartbeat closes; or an unattributed ghost, one of the scenario's
legacy slices, whose orders carry no sub tag, which it quarantines). Then one round of the loop runs in a forked run
worker (harness/replays.py); at the set rates, the simulator fails one request, the run worker
gets a database fault (harness/db_faults.py), or it is SIGKILLed at a random store call and a
second worker recovers. Time is compressed through the flags (two confirmations, two clean
cycles, no minimum pause or cooldown); nothing sleeps.

After every round the invariants hold (harness/invariants.py). At the end, after quiet rounds:
every attributable drift was resolved within two clean rounds of its appearance (a round with
a fault or a kill is not clean), every other one was reported (foreign orders: not
attributable), quarantined (the unattributed ghosts, within two clean rounds too) or held for
an operator (the recent web-UI closes: a NO_GO with its reason, the slice open and held), and
none is lost. The policy replay of the soak's recorded history with its live flags reproduces
every recorded decision (fidelity).

RECON_SOAK_ROUNDS (default 8 plus 3 quiet rounds, two accounts: 22 cycles, 78 s to 2.5 min here;
100 rounds: 13 min) and RECON_SOAK_SEED set
the size and the seed; the counts are written to soak-summary.json in the test's folder and
printed in the failure message if it fails. With RECON_SOAK_KEEP=1 the folder (the Dagster
instance, the loop's journal, the workers' log) is kept, with the trading database dumped into
it as soak.sql, for inspection.
"""

import json
import os
import random
import shutil
import subprocess
import tempfile
from collections import Counter
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from recon_assets.core.attribution import make_client_order_id
from recon_assets.defs.partitions import exchange_account_partitions, profile_partitions
from recon_assets.simulator.scenarios import LEGACY_SLICES
from recon_assets.simulator.server import SimulatorServer
from recon_assets.simulator.state import now_ms, random_suffix
from recon_assets_tests.conftest import TEMPLATE_DB
from recon_assets_tests.harness.db_faults import LOST_AFTER, LOST_BEFORE, STATEMENT_TIMEOUT
from recon_assets_tests.harness.invariants import assert_invariants
from recon_assets_tests.harness.replays import ReplayServer

pytestmark = pytest.mark.integration

ROUNDS = int(os.environ.get("RECON_SOAK_ROUNDS", "8"))
SEED = int(os.environ.get("RECON_SOAK_SEED", "18"))
QUIET_ROUNDS = 3  # at the end: no new drift, no faults, so everything can settle
# Rates per round.
DRIFT_RATE, EXCHANGE_FAULT_RATE, DB_FAULT_RATE, KILL_RATE = 0.8, 0.3, 0.25, 0.2
# However the draws fall, each kind is injected at least once: a kill in round 1, a database
# fault in round 3, an exchange fault in round 5, a web-UI close (ghost) as soon as one is
# possible from round 4 on, a web-UI close of a legacy slice (unattributed ghost) in round 6, a
# recent web-UI close (held for an operator) from round 7 on.
FORCED = {1: "kill", 3: "database", 5: "exchange"}
# One round of the loop usually makes more store calls, so the kill usually lands; when it does
# not (a cycle failed early), the worker finishes the round itself, the kill is not counted, and
# the recovering worker finds nothing left of the round to do.
CALLS_PER_ROUND = 100
SETTINGS = {
    "position_parity_confirmations": 2, "watchdog_auto_resume_clean_cycles": 2,
    "watchdog_auto_resume_min_pause_ms": 0, "watchdog_auto_resume_cooldown_ms": 0,
    # The soak is about drift, faults and kills; the watchdog's pauses would hold the synthetic
    # exits back by design (its own tests and the kill points cover it).
    "position_parity_max_notional_pct": 100.0,
    "recency_guard_seconds": 0.0,
    # Its rounds are seconds apart and the simulator lists every order at once: a just-placed
    # order's grace (its own tests: test_cycle.py, test_diff.py) would only delay each drift.
    "new_order_grace_seconds": 0.0,
}
# Each profile trades its own symbols, so a web-UI close hits one profile's one slice.
SYMBOLS = {"alpha": ("SOLUSDT", "LINKUSDT"), "beta": ("ADAUSDT", "DOGEUSDT"),
           "gamma": ("XRPUSDT", "SOLUSDT")}
PROFILES = {"alpha": ("acct1", "ALP"), "beta": ("acct1", "BET"), "gamma": ("acct2", "GAM")}
# The scenario's legacy slices: no sub tag on their orders, on symbols the profile does not
# otherwise trade. profile -> (trade_id, symbol)
LEGACY = {profile: (trade_id, symbol) for profile, trade_id, symbol, *_ in LEGACY_SLICES}
UNATTRIBUTED_GHOST_ROUND = 6
WEB_CLOSE_ROUND = 7
# A close this long ago is before the exchange's trade history (7 days) and the fills window.
BEFORE_HISTORY_MS = 13 * 86_400_000
EXCHANGE_FAULTS = ("server_error", "drop", "malformed_json", "truncated")
EXCHANGE_PATHS = ("/fapi/v1/openOrders", "/fapi/v2/positionRisk", "/fapi/v1/userTrades",
                  "/fapi/v1/order", None)
DB_FAULTS = ((LOST_BEFORE, None), (LOST_AFTER, None), (LOST_AFTER, "recon_reconcile_entry_fill"),
             (LOST_BEFORE, "recon_record_cycle"), (STATEMENT_TIMEOUT, "recon_snapshot_account"),
             (LOST_AFTER, "recon_synthetic_exit"))


class TradingApp:
    """Places orders like the trading app (booked in the database) and makes the exchange move
    behind its back; remembers every drift it made, and when."""

    def __init__(self, sim: SimulatorServer, dsn: str, rng: random.Random):
        self.sim, self.dsn, self.rng = sim, dsn, rng
        self.drifts: list[dict] = []
        self.pending_partials: list[dict] = []
        self.n = 0

    def _order(self, profile: str, symbol: str, record: bool = True) -> tuple[str, str, Decimal]:
        account, sub_tag = PROFILES[profile]
        market = self.sim.exchange.markets[symbol]
        price = (market.mark_price * Decimal("0.97")).quantize(market.tick_size)
        qty = max(market.step_size, (Decimal(40) / price).quantize(market.step_size)) * 2
        self.n += 1
        trade_id = f"s{self.n}"
        cid = make_client_order_id(sub_tag, trade_id, "ENTRY")
        order = self.sim.exchange.place_order(account, symbol, "BUY", "LIMIT", str(qty),
                                              str(price), client_order_id=cid)
        if record:
            with psycopg.connect(self.dsn) as conn:
                conn.execute(
                    "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, "
                    "client_order_id, exchange_order_id, status, qty, price) VALUES "
                    "(%s, %s, 'ENTRY', %s, 'buy', %s, %s, 'open', %s, %s)",
                    (profile, trade_id, market.unified, cid, str(order.order_id), qty, price))
        return cid, trade_id, qty

    def _open_slices(self, account: str, symbol: str) -> list[tuple]:
        unified = self.sim.exchange.markets[symbol].unified
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(
                "SELECT t.profile_id, t.trade_id FROM trade_history t JOIN profiles p "
                "ON p.id = t.profile_id WHERE p.exchange_account = %s AND t.symbol = %s "
                "AND t.status = 'open'", (account, unified)).fetchall()

    def _busy(self, account: str, symbol: str) -> bool:
        unified = self.sim.exchange.markets[symbol].unified
        with psycopg.connect(self.dsn) as conn:
            return bool(conn.execute(
                "SELECT 1 FROM orders o JOIN profiles p ON p.id = o.profile_id WHERE "
                "p.exchange_account = %s AND o.symbol = %s AND o.status IN "
                "('new', 'open', 'partially_filled')", (account, unified)).fetchone())

    def step(self, round_no: int, drift: bool) -> None:
        for partial in self.pending_partials:  # the rest of last round's partial fills
            self.sim.exchange.fill_order(PROFILES[partial["profile"]][0],
                                         client_order_id=partial["client_order_id"])
        self.pending_partials.clear()
        closed = {d["profile"] for d in self.drifts if d["kind"] == "unattributed_ghost"}
        if drift and round_no >= UNATTRIBUTED_GHOST_ROUND and not closed:
            self._close_legacy(round_no, "alpha")
            return
        if not drift or self.rng.random() > DRIFT_RATE:
            return
        kind = self.rng.choice(("entry_filled", "partial_fill", "cancelled", "foreign_order",
                                "ghost", "web_close", "unattributed_ghost"))
        if kind == "unattributed_ghost":
            left = sorted(set(LEGACY) - closed)
            if left:
                self._close_legacy(round_no, self.rng.choice(left))
                return
            kind = "entry_filled"  # every legacy slice is closed already
        if round_no >= 4 and not any(d["kind"] == "ghost" for d in self.drifts):
            kind = "ghost"  # falls back to an entry fill while no slice can be closed
        elif round_no >= WEB_CLOSE_ROUND and not any(d["kind"] == "web_close"
                                                     for d in self.drifts):
            kind = "web_close"
        profile = self.rng.choice(sorted(PROFILES))
        account = PROFILES[profile][0]
        symbol = self.rng.choice(SYMBOLS[profile])
        if kind in ("ghost", "web_close"):
            # A web-UI close of a position that is exactly one open slice of this profile: a
            # moment ago (web_close: its fill waits for an operator), or before the trade
            # history (ghost: no real fill to book).
            # (Not a slice an earlier drift already closed and recon has not resolved yet: the
            # exchange is flat there, a second close would close nothing.)
            pending = {(d["profile"], d.get("symbol")) for d in self.drifts
                       if d["resolved_round"] is None}
            candidates = [(p, s) for p in sorted(PROFILES) for s in SYMBOLS[p]
                          if (p, s) not in pending and not self._busy(PROFILES[p][0], s)
                          and [row[0] for row in self._open_slices(PROFILES[p][0], s)] == [p]]
            if not candidates:
                kind = "entry_filled"
            else:
                profile, symbol = self.rng.choice(candidates)
                account = PROFILES[profile][0]
                (_, trade_id), = self._open_slices(account, symbol)
                closed = self.sim.exchange.close_position(
                    account, symbol, client_order_id="web_" + random_suffix(16),
                    at_ms=now_ms() - BEFORE_HISTORY_MS if kind == "ghost" else None)
                assert closed is not None, (kind, profile, symbol, "no position to close")
                self._record(kind, round_no, profile, trade_id=trade_id, symbol=symbol)
                return
        if self._busy(account, symbol) or (kind != "foreign_order"
                                           and self._open_slices(account, symbol)
                                           and any(r[0] != profile for r in
                                                   self._open_slices(account, symbol))):
            return  # keep a symbol to one profile's trades at a time
        if kind == "foreign_order":
            market = self.sim.exchange.markets[symbol]
            price = (market.mark_price * Decimal("0.5")).quantize(market.tick_size)
            cid = "web_" + random_suffix(16)
            self.sim.exchange.place_order(account, symbol, "BUY", "LIMIT",
                                          str(market.step_size * 10), str(price),
                                          client_order_id=cid)
            self._record(kind, round_no, profile, client_order_id=cid, symbol=symbol)
            return
        cid, trade_id, qty = self._order(profile, symbol)
        if kind == "entry_filled":
            self.sim.exchange.fill_order(account, client_order_id=cid)
        elif kind == "partial_fill":
            market = self.sim.exchange.markets[symbol]
            half = (qty / 2).quantize(market.step_size)
            self.sim.exchange.fill_order(account, client_order_id=cid, qty=str(half))
            self.pending_partials.append({"profile": profile, "client_order_id": cid})
        else:
            self.sim.exchange.cancel_order(account, client_order_id=cid)
        self._record(kind, round_no, profile, client_order_id=cid, trade_id=trade_id,
                     symbol=symbol)

    def _close_legacy(self, round_no: int, profile: str) -> None:
        """A web-UI close of the profile's legacy slice before the trade history: a ghost with no
        real fill, which the heartbeat cannot attribute."""
        trade_id, symbol = LEGACY[profile]
        self.sim.exchange.close_position(PROFILES[profile][0], symbol,
                                         client_order_id="web_" + random_suffix(16),
                                         at_ms=now_ms() - BEFORE_HISTORY_MS)
        self._record("unattributed_ghost", round_no, profile, trade_id=trade_id, symbol=symbol)

    def _record(self, kind: str, round_no: int, profile: str, **what) -> None:
        self.drifts.append({"kind": kind, "round": round_no, "profile": profile, **what,
                            "resolved_round": None, "outcome": None})


def resolve(dsn: str, drifts: list[dict], round_no: int) -> None:
    """Mark each drift the database now agrees with (or that was rightly left alone)."""
    with psycopg.connect(dsn) as conn:
        for d in drifts:
            if d["resolved_round"] is not None:
                continue
            outcome = None
            if d["kind"] in ("entry_filled", "partial_fill", "cancelled"):
                row = conn.execute("SELECT status FROM orders WHERE client_order_id = %s",
                                   (d["client_order_id"],)).fetchone()
                want = "canceled" if d["kind"] == "cancelled" else "filled"
                outcome = "resolved" if row and row[0] == want else None
            elif d["kind"] == "ghost":
                row = conn.execute(
                    "SELECT close_reason FROM trade_history WHERE profile_id = %s AND "
                    "trade_id = %s AND status = 'closed'", (d["profile"], d["trade_id"])).fetchone()
                if row and row[0] == "parity_synthetic_exit":
                    outcome = "resolved"
            elif d["kind"] == "web_close":
                # Its real fill is a NO_GO with its reason, awaiting an operator; the slice is
                # open and the heartbeat holds it or reports it ambiguous (never closed at the
                # mark).
                no_go = conn.execute(
                    "SELECT reason FROM recon.backfill_decisions WHERE profile_id = %s AND "
                    "trade_id = %s AND decision = 'NO_GO' AND reason <> ''",
                    (d["profile"], d["trade_id"])).fetchone()
                check = conn.execute(
                    "SELECT c.decision, t.status FROM recon.parity_checks c JOIN trade_history t "
                    "ON t.profile_id = c.profile_id AND t.trade_id = c.trade_id WHERE "
                    "c.profile_id = %s AND c.trade_id = %s ORDER BY c.id DESC LIMIT 1",
                    (d["profile"], d["trade_id"])).fetchone()
                # (Ambiguous when the profile has traded the symbol again since: the gap is no
                # longer one slice's, and nothing is singled out; never closed either way.)
                if no_go and check in (("held", "open"), ("ambiguous", "open")):
                    outcome = "held_for_operator"
                    d["no_go_reason"] = no_go[0]
            elif d["kind"] == "unattributed_ghost":
                # Quarantined, and still open: never closed without attribution.
                row = conn.execute(
                    "SELECT t.status FROM recon.quarantine q JOIN trade_history t ON "
                    "t.profile_id = q.profile_id AND t.trade_id = q.trade_id AND "
                    "t.slice_no = q.slice_no WHERE q.profile_id = %s AND q.trade_id = %s AND "
                    "q.released_at IS NULL", (d["profile"], d["trade_id"])).fetchone()
                outcome = "quarantined" if row and row[0] == "open" else None
            elif d["kind"] == "foreign_order":
                row = conn.execute(
                    "SELECT attributable, kind FROM recon.mismatches WHERE client_order_id = %s "
                    "ORDER BY id DESC LIMIT 1", (d["client_order_id"],)).fetchone()
                outcome = "reported" if row and row[0] is False else None
            if outcome:
                d["resolved_round"], d["outcome"] = round_no, outcome


@pytest.fixture
def soak(pg_server, template_copies):
    base = Path(tempfile.mkdtemp(prefix="recon-soak-"))
    os.chmod(base, 0o755)
    name = f"soak{os.getpid()}"
    random.seed(SEED)
    sim = SimulatorServer(port=0, scenario="legacy_slices")
    sim.start()
    sim.exchange.set_rate_limits(weight_per_minute=10 ** 9)  # hundreds of cycles in minutes
    server = ReplayServer(base / "workers.log")
    try:
        dsn = pg_server.create_database(name, template=TEMPLATE_DB)
        sim.scenario.seed_database(dsn)
        (base / "home").mkdir()
        yield {"base": base, "dsn": dsn, "sim": sim, "server": server, "pg": pg_server}
    finally:
        server.close()
        sim.stop()
        if os.environ.get("RECON_SOAK_KEEP"):  # the folder kept, the database dumped into it
            subprocess.run(["pg_dump", "-f", str(base / "soak.sql"), pg_server.dsn(name)],
                           check=False)
            print(f"soak kept: {base} (the trading database: soak.sql)")
        pg_server.drop_database(name)
        if not os.environ.get("RECON_SOAK_KEEP"):
            shutil.rmtree(base, ignore_errors=True)


def test_soak_with_drift_faults_and_kills(soak):
    rng = random.Random(SEED)
    sim, dsn, server, base = soak["sim"], soak["dsn"], soak["server"], soak["base"]
    app = TradingApp(sim, dsn, rng)
    plan = sim.scenario
    partitions = {exchange_account_partitions.name: plan.accounts(),
                  profile_partitions.name: sorted(p["id"] for p in plan.db["profiles"])}
    faults: Counter = Counter()
    unclean: set[int] = set()
    not_landed: list[int] = []
    total = ROUNDS + QUIET_ROUNDS
    for r in range(total):
        quiet = r >= ROUNDS
        app.step(r, drift=not quiet)
        job = {"dsn": dsn, "home": str(base / "home"), "sim_url": sim.url,
               "credentials": sim.credentials(), "settings": SETTINGS, "rounds": total,
               "admin_dsn": soak["pg"].dsn(), "partitions": partitions,
               "until": f"{r}:escalation_sensor#0", "statement_timeout_ms": 3000}
        forced = FORCED.get(r) if r < ROUNDS else None
        if not quiet and (rng.random() < EXCHANGE_FAULT_RATE or forced == "exchange"):
            kind, path = rng.choice(EXCHANGE_FAULTS), rng.choice(EXCHANGE_PATHS)
            sim.exchange.inject_fault(kind, path=path, count=1)
            faults[f"exchange:{kind}"] += 1
            unclean.add(r)
        if not quiet and (rng.random() < DB_FAULT_RATE or forced == "database"):
            kind, function = rng.choice(DB_FAULTS)
            job["db_fault"] = {"kind": kind, "function": function, "nth": 1}
            faults[f"database:{kind}"] += 1
            unclean.add(r)
        killed = None
        if not quiet and (rng.random() < KILL_RATE or forced == "kill"):
            killed = {**job, "kill_at": rng.randint(1, CALLS_PER_ROUND),
                      "when": rng.choice(("before", "after"))}
        if killed:
            outcome = server.run(killed)
            if outcome["signal"] == 9:
                faults["kill"] += 1
                unclean.add(r)
            else:
                not_landed.append(r)  # the worker finished the round before its kill point
            assert outcome["signal"] in (9, None), outcome
            job.pop("db_fault", None)  # the recovering worker runs clean
        outcome = server.run(job)
        assert outcome == {"signal": None, "code": 0}, (r, outcome, _log(base))
        # The loop is at the end of this round, not beyond: the next round's drift must come
        # before the next round's cycles (a kill that did not land once let one job run them all).
        done = json.loads((base / "home" / "loop-journal.json").read_text())["done"]
        assert done[-1] == f"{r}:escalation_sensor", (r, done[-3:])
        sim.exchange.clear_faults()
        assert_invariants(dsn, when=f"after round {r} (seed {SEED})")
        resolve(dsn, app.drifts, r)

    journal = json.loads((base / "home" / "loop-journal.json").read_text())
    runs = Counter((q["job"], q["status"]) for q in journal["runs"])
    summary = {
        "seed": SEED, "rounds": total,
        "cycles": sum(n for (job, _), n in runs.items() if job == "reconciliation_cycle"),
        "failed_runs": {f"{job}": n for (job, status), n in runs.items() if status != "SUCCESS"},
        "faults": dict(faults), "killed_runs": len(journal.get("killed_runs", [])),
        "kills_not_landed": not_landed,
        "drifts": dict(Counter(d["kind"] for d in app.drifts)),
        "resolved": sum(d["outcome"] == "resolved" for d in app.drifts),
        "reported_not_attributable": sum(d["outcome"] == "reported" for d in app.drifts),
        "quarantined": sum(d["outcome"] == "quarantined" for d in app.drifts),
        # The recent web-UI closes: each a NO_GO of the EXIT backfill, with its reason, the
        # slice held for an operator.
        "held_for_operator": sum(d["outcome"] == "held_for_operator" for d in app.drifts),
        "lost": [d for d in app.drifts if d["outcome"] is None],
    }
    with psycopg.connect(dsn) as conn:
        summary["open_quarantines"] = conn.execute(
            "SELECT count(*) FROM recon.quarantine WHERE released_at IS NULL").fetchone()[0]
    # Within two clean rounds of its appearance (the round it appeared in counts).
    late = [d for d in app.drifts if d["outcome"] in ("resolved", "quarantined") and
            len([x for x in range(d["round"], d["resolved_round"] + 1) if x not in unclean]) > 2]
    summary["late"] = late
    (Path(os.environ.get("RECON_SOAK_SUMMARY", base / "soak-summary.json"))).write_text(
        json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, default=str))
    assert app.drifts and summary["cycles"] >= 2 * total
    if ROUNDS > max(FORCED):
        assert faults["kill"] and any(k.startswith("database:") for k in faults) \
            and any(k.startswith("exchange:") for k in faults), summary
        assert summary["drifts"].get("ghost"), summary
    if ROUNDS > UNATTRIBUTED_GHOST_ROUND:
        assert summary["quarantined"] >= 1, summary
    # Nothing else was quarantined: each open quarantine is one of the unattributed ghosts.
    assert summary["open_quarantines"] == summary["quarantined"], summary
    assert not summary["lost"], summary
    assert not late, summary
    # Every recent web-UI close waits for an operator on its real fill (never closed at the mark).
    if ROUNDS > WEB_CLOSE_ROUND:
        assert summary["drifts"].get("web_close"), summary
    assert all(d["outcome"] == "held_for_operator" for d in app.drifts
               if d["kind"] == "web_close"), summary
    assert not [d for d in app.drifts if d["kind"] != "web_close"
                and d["outcome"] == "held_for_operator"], summary
    # The policy replay of the soak's history, with the flags each cycle recorded, reproduces
    # every recorded decision.
    fidelity = replay_fidelity(dsn)
    assert fidelity.fidelity_ok, (fidelity.first_difference, summary)


def replay_fidelity(dsn: str):
    """The policy replay of the whole recorded history with the soak's live flags."""
    from recon_assets.core.replay import replay
    from recon_assets.defs.replay.assets import replay_policy
    from recon_assets.resources.database import PostgresStore
    from recon_assets.resources.replay_store import ReplayStore
    from recon_assets.settings import ReconSettings

    settings = ReconSettings(**SETTINGS)
    history = ReplayStore(PostgresStore(dsn=dsn)).history(None, [])
    return replay(history, replay_policy(settings), replay_policy(settings))


def _log(base: Path) -> str:
    path = base / "workers.log"
    return path.read_text()[-3000:] if path.exists() else ""
