"""Benchmark of the policy replay (issue 19: "the replay over 10,000 recorded cycles finishes in
seconds"), on a real PostgreSQL started here holding a synthetic recorded history
(recon_assets_tests/harness/replay_history.py: the core rules run as a small live loop; ghosts,
quarantines, watchdog pauses and auto-resumes in it).

Timed, each the median of --rounds in one process:
- **load**: `ReplayStore.history`, the one-statement read of the history (the baseline: what
  any replay must pay whatever the flags);
- **fold (live flags)**: one `core.replay.fold` of that history;
- **replay**: `core.replay.replay`, what the `policy_replay` job computes: the live fold, the
  override fold, the fidelity comparison, the events, summary and per-day table;
- **job total**: load + replay (the asset's work, without Dagster's run overhead or the record).

    .venv/bin/python benchmarks/policy_replay.py [--cycles 10000] [--profiles 3] [--rounds 3]

Prints a table; writes nothing into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from recon_assets.core.backfill import BackfillPolicy  # noqa: E402
from recon_assets.core.replay import ReplayPolicy, fold, replay  # noqa: E402
from recon_assets.db.migrate import migrate  # noqa: E402
from recon_assets.local_postgres import LocalPostgres  # noqa: E402
from recon_assets.resources.database import PostgresStore  # noqa: E402
from recon_assets.resources.replay_store import ReplayStore  # noqa: E402
from recon_assets_tests.harness.replay_history import (LIVE_PARITY, LIVE_RESUME,  # noqa: E402
                                                       recorded_history)


def _store(dsn: str, history) -> None:
    """Write the synthetic history into the recon.* tables, as the loop would have."""
    profiles = sorted({v["profile_id"] for v in history.verdicts})
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO profiles (id, exchange_account, sub_tag, "
                        "allocated_capital_usd) VALUES (%s, %s, %s, 10000)",
                        [(p, p.split("-")[0], f"T{i}") for i, p in enumerate(profiles)])
        with cur.copy("COPY recon.cycles (cycle_id, exchange_account, started_at, status, "
                      "error) FROM STDIN") as copy:
            for c in history.cycles:
                copy.write_row((c["cycle_id"], c["exchange_account"], c["started_at"],
                                c["status"], c["error"]))
        with cur.copy("COPY recon.parity_checks (cycle_id, exchange_account, profile_id, "
                      "trade_id, slice_no, symbol, side, virtual_open_qty, mark_price, "
                      "mismatch_notional_usd, attributable, ghost, streak, "
                      "confirmations_required, streak_started_cycle, decision, reason, "
                      "dry_run) FROM STDIN") as copy:
            for k in history.checks:
                copy.write_row((k["cycle_id"], k["exchange_account"], k["profile_id"],
                                k["trade_id"], k["slice_no"], k["symbol"], "long", 1,
                                k["mark_price"], k["mismatch_notional_usd"], k["attributable"],
                                k["ghost"], k["streak"], k["confirmations_required"],
                                k["streak_started_cycle"], k["decision"], "synthetic",
                                k["dry_run"]))
        with cur.copy("COPY recon.watchdog_checks (cycle_id, exchange_account, profile_id, "
                      "allocated_capital_usd, mismatch_notional_usd, threshold_pct, "
                      "threshold_usd, findings, tripped, clean, reason, checked_at) "
                      "FROM STDIN") as copy:
            for v in history.verdicts:
                copy.write_row((v["cycle_id"], v["exchange_account"], v["profile_id"],
                                v["allocated_capital_usd"], v["mismatch_notional_usd"],
                                v["threshold_pct"], v["threshold_usd"], v["findings"],
                                v["tripped"], v["clean"], v["reason"], v["checked_at"]))
        with cur.copy("COPY recon.trading_gate_events (profile_id, action, previous_state, "
                      "previous_pause_source, trading_state, pause_source, reason, cycle_id, "
                      "at) FROM STDIN") as copy:
            for e in history.gate_events:
                copy.write_row((e["profile_id"], e["action"], e["previous_state"],
                                e["previous_pause_source"], e["trading_state"],
                                e["pause_source"], "synthetic", e["cycle_id"], e["at"]))
        conn.commit()
        conn.execute("ANALYZE")


def _median(fn, rounds: int):
    times, value = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--profiles", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    live = ReplayPolicy(parity=LIVE_PARITY, max_notional_pct=5.0, resume=LIVE_RESUME,
                        backfill=BackfillPolicy())
    overrides = ReplayPolicy(parity=LIVE_PARITY.__class__(1, True, False), max_notional_pct=5.0,
                             resume=LIVE_RESUME, backfill=BackfillPolicy())
    synthetic = recorded_history(args.cycles, profiles=args.profiles, ghost_rate=0.05)
    base = tempfile.mkdtemp(prefix="recon-replay-bench-")
    os.chmod(base, 0o755)  # the postgres user must reach its data directory
    pg = LocalPostgres(os.path.join(base, "data"))
    try:
        pg.start()
        dsn = pg.create_database("trading")
        migrate(dsn)
        _store(dsn, synthetic)
        store = ReplayStore(PostgresStore(dsn=dsn))
        load_s, history = _median(lambda: store.history(None, []), args.rounds)
        fold_s, _ = _median(lambda: fold(history, live), args.rounds)
        replay_s, result = _median(lambda: replay(history, live, overrides), args.rounds)
        rows = {"cycles": len(history.cycles), "heartbeat checks": len(history.checks),
                "verdicts": len(history.verdicts), "gate events": len(history.gate_events)}
        print(json.dumps(rows))
        print(f"{'step':<40}{'median s':>10}{'x load':>9}")
        for name, seconds in (("load (baseline: ReplayStore.history)", load_s),
                              ("fold (live flags)", fold_s),
                              ("replay (two folds + fidelity + report)", replay_s),
                              ("job total (load + replay)", load_s + replay_s)):
            print(f"{name:<40}{seconds:>10.3f}{seconds / load_s:>9.2f}")
        events = {}
        for e in result.events:
            events[(e["policy"], e["kind"])] = events.get((e["policy"], e["kind"]), 0) + 1
        print(f"fidelity_ok={result.fidelity_ok}; events "
              + ", ".join(f"{p}/{k}={n}" for (p, k), n in sorted(events.items())))
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
