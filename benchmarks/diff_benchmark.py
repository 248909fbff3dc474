"""Benchmark of `reconciliation_diff` (issue 4): 10k, 100k and 1M orders with 1% drift.

In one run, for each size, four measurements on the same data:
  diff          reconciliation_diff over the whole snapshot (orders, positions, slices)
  duckdb_join   a DuckDB full outer join of the same two order frames on (account,
                client_order_id), materialised as an Arrow table: the reference of issue 4
  duckdb_count  the same join, count(*) only (nothing materialised): a lower bound
  dict_loop     a per-row Python loop with dicts that finds the same order mismatches
                (same matching and fallback, tolerances, recency guard and attribution)

The data is written to a temporary parquet folder (outside the repo, removed at the end) and
read back by child processes: one times every method round-robin (so a burst of load from other
work on the machine hits them alike), and one per method measures the peak resident memory of
one call, after a warm-up call, above the process's resident set just before it (Linux VmHWM,
reset through /proc/self/clear_refs; memory the allocator kept from the warm-up is not counted
again, so this is the steady-state extra memory of a cycle). Before timing, the dict loop's order findings are checked equal to the
diff's on the same data (column `loop==diff`).

    .venv/bin/python benchmarks/diff_benchmark.py [--sizes 10000,100000,1000000] [--repeat N]

Prints a table; writes nothing into the repository.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from recon_assets.core.attribution import parse_client_order_id  # noqa: E402
from recon_assets.core.diff import (  # noqa: E402
    ABS_TOL,
    OPEN_ORDER_STATUSES,
    REL_TOL,
    reconciliation_diff,
)

DB_READ_AT = pd.Timestamp("2024-06-01T12:00:00Z")
GUARD_S = 5.0
ORDER_KINDS = ("missing_from_exchange", "missing_in_db", "status_drift", "qty_drift",
               "price_drift")
FRAMES = ("profiles", "db_orders", "db_positions", "db_trade_slices", "exchange_open_orders",
          "exchange_positions")


# --------------------------------------------------------------------------- data

def generate(n_orders: int, drift: float = 0.01, seed: int = 7) -> dict[str, pd.DataFrame]:
    """A consistent snapshot of `n_orders` open orders, then `drift` x n_orders differences
    spread over every order kind (plus exchange-id fallbacks, recent rows and position/ghost
    drift), vectorised so 1M rows take a couple of seconds."""
    rng = np.random.default_rng(seed)
    n_accounts, profiles_per_account, n_symbols = 4, 5, 50
    old = DB_READ_AT - pd.Timedelta(minutes=10)
    accounts = np.array([f"acct{a}" for a in range(n_accounts)], dtype=object)
    symbols = np.array([f"S{s:02d}/USDT:USDT" for s in range(n_symbols)], dtype=object)
    prof_account = np.repeat(np.arange(n_accounts), profiles_per_account)
    n_profiles = len(prof_account)
    profiles = pd.DataFrame({
        "profile_id": [f"p{i}" for i in range(n_profiles)],
        "exchange_account": accounts[prof_account],
        "sub_tag": [f"T{i}" for i in range(n_profiles)],
        "allocated_capital_usd": 100_000.0,
        "trading_state": "active",
        "pause_source": None,
        "paused_at": pd.NaT,
        "last_auto_resume_at": pd.NaT,
    })

    idx = np.arange(n_orders)
    prof = rng.integers(0, n_profiles, n_orders)
    sym = rng.integers(0, n_symbols, n_orders)
    side = np.where(rng.random(n_orders) < 0.5, "buy", "sell").astype(object)
    qty = np.round(rng.uniform(0.001, 5.0, n_orders), 3)
    filled = np.where(rng.random(n_orders) < 0.2, np.round(qty * 0.5, 3), 0.0)
    price = np.round(rng.uniform(1.0, 50_000.0, n_orders), 2)
    trade = [f"t{i:08d}" for i in idx]
    coid = [f"rc.T{p}.{t}.E1" for p, t in zip(prof.tolist(), trade)]
    eoid = [str(10_000_000_000 + i) for i in idx]
    status = np.where(filled > 0, "partially_filled", "open").astype(object)
    db = pd.DataFrame({
        "profile_id": [f"p{p}" for p in prof.tolist()],
        "exchange_account": accounts[prof_account[prof]],
        "trade_id": trade, "intent": "ENTRY", "symbol": symbols[sym], "side": side,
        "client_order_id": coid, "exchange_order_id": eoid, "status": status,
        "qty": qty, "filled_qty": filled, "price": price,
        "created_at": old, "updated_at": old,
    })
    ex = pd.DataFrame({
        "account": db["exchange_account"], "symbol": db["symbol"], "exchange_order_id": eoid,
        "client_order_id": coid, "side": side, "order_type": "limit", "status": "open",
        "qty": qty.copy(), "filled_qty": filled.copy(), "price": price.copy(),
        "notional_usd": qty * price, "created_at": old, "fetched_at": DB_READ_AT,
    })

    # 1% drift: disjoint order rows per kind (+ fallback matches and recent rows, no finding).
    n_drift = max(8, int(n_orders * drift))
    chosen = rng.choice(n_orders, size=min(n_orders, n_drift), replace=False)
    groups = np.array_split(chosen, 8)
    drop_ex, terminal, more_qty, more_filled, new_price, fallback, recent_db, recent_ex = groups
    db.loc[terminal, "status"] = "filled"
    ex.loc[more_qty, "qty"] = ex.loc[more_qty, "qty"] + 1.0
    ex.loc[more_filled, "filled_qty"] = ex.loc[more_filled, "qty"]
    ex.loc[new_price, "price"] = ex.loc[new_price, "price"] * 1.01
    ex.loc[fallback, "client_order_id"] = [f"web_{i}" for i in fallback]  # same exchange id
    db.loc[recent_db, "updated_at"] = DB_READ_AT - pd.Timedelta(seconds=1)
    db.loc[recent_db, "status"] = "canceled"  # canceled a moment ago, still on the exchange
    ex.loc[recent_ex, "qty"] = ex.loc[recent_ex, "qty"] + 2.0
    ex.loc[recent_ex, "created_at"] = DB_READ_AT + pd.Timedelta(seconds=1)
    ex = ex.drop(index=drop_ex)
    n_new = len(drop_ex)
    extra_prof = rng.integers(0, n_profiles, n_new)
    extra_sym = rng.integers(0, n_symbols, n_new)
    extra = pd.DataFrame({
        "account": accounts[prof_account[extra_prof]], "symbol": symbols[extra_sym],
        "exchange_order_id": [str(20_000_000_000 + i) for i in range(n_new)],
        "client_order_id": [f"rc.T{p}.x{i:08d}.E1" if i % 2 else f"manual_{i}"
                            for i, p in enumerate(extra_prof.tolist())],
        "side": "buy", "order_type": "limit", "status": "open", "qty": 1.0, "filled_qty": 0.0,
        "price": 100.0, "notional_usd": 100.0, "created_at": old, "fetched_at": DB_READ_AT,
    })
    ex = pd.concat([ex, extra], ignore_index=True)

    # Positions: every (profile, symbol) pair holds a long or short; the exchange holds the net
    # per account; 1% of the account symbols drift. One open slice per DB position row; the
    # exchange is flat on a few symbols whose slices are ghosts.
    pp, ss = np.meshgrid(np.arange(n_profiles), np.arange(n_symbols), indexing="ij")
    pp, ss = pp.ravel(), ss.ravel()
    pos_qty = np.round(rng.uniform(0.01, 3.0, len(pp)), 3)
    pos_side = np.where(rng.random(len(pp)) < 0.5, "long", "short").astype(object)
    db_positions = pd.DataFrame({
        "profile_id": [f"p{p}" for p in pp.tolist()], "exchange_account": accounts[prof_account[pp]],
        "symbol": symbols[ss], "side": pos_side, "qty": pos_qty,
        "avg_price": 100.0, "updated_at": old,
    })
    signed = pos_qty * np.where(pos_side == "long", 1.0, -1.0)
    net = (pd.DataFrame({"a": prof_account[pp], "s": ss, "q": signed})
           .groupby(["a", "s"], sort=True)["q"].sum().round(3))
    a_idx, s_idx = np.array(net.index.get_level_values(0)), np.array(net.index.get_level_values(1))
    ex_net = net.to_numpy().copy()
    n_pos_drift = max(1, int(len(ex_net) * drift))
    pos_drift = rng.choice(len(ex_net), size=n_pos_drift, replace=False)
    ex_net[pos_drift] += 1.0
    exchange_positions = pd.DataFrame({
        "account": accounts[a_idx], "symbol": symbols[s_idx],
        "side": np.where(ex_net >= 0, "long", "short").astype(object), "qty": np.abs(ex_net),
        "entry_price": 100.0, "mark_price": 101.0, "notional_usd": np.abs(ex_net) * 101.0,
        "min_qty_step": 0.001, "fetched_at": DB_READ_AT,
    })
    slices = pd.DataFrame({
        "profile_id": db_positions["profile_id"], "exchange_account": db_positions["exchange_account"],
        "trade_id": [f"s{i:06d}" for i in range(len(db_positions))], "slice_no": 1,
        "symbol": db_positions["symbol"], "side": pos_side, "entry_qty": pos_qty,
        "exit_qty": 0.0, "virtual_open_qty": pos_qty, "entry_price": 100.0, "opened_at": old,
        "status": "open", "updated_at": old,
        # Each slice's entry order carries its profile's sub tag (T<i> for profile p<i>).
        "order_client_ids": [[f"rc.T{p}.s{i:06d}.E1"] for i, p in enumerate(
            db_positions["profile_id"].str.removeprefix("p"))],
    })
    # One flat account symbol: its slices are ghosts (and its position drifts).
    flat = int(np.setdiff1d(np.arange(len(ex_net)), pos_drift)[0])
    exchange_positions.loc[flat, ["qty", "notional_usd"]] = 0.0
    return {"profiles": profiles, "db_orders": db, "db_positions": db_positions,
            "db_trade_slices": slices, "exchange_open_orders": ex,
            "exchange_positions": exchange_positions}


# --------------------------------------------------------------------------- measured methods

def run_diff(data: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return reconciliation_diff(
        profiles=data["profiles"], db_orders=data["db_orders"],
        db_positions=data["db_positions"], db_trade_slices=data["db_trade_slices"],
        exchange_open_orders=data["exchange_open_orders"],
        exchange_positions=data["exchange_positions"], cycle_id="bench",
        db_read_at=DB_READ_AT, recency_guard_s=GUARD_S)


def duckdb_join(data: dict[str, pd.DataFrame], count_only: bool = False):
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.register("d", data["db_orders"])
        con.register("e", data["exchange_open_orders"])
        select = "count(*)" if count_only else "*"
        rel = con.sql(f"SELECT {select} FROM d FULL OUTER JOIN e ON d.exchange_account = e.account "
                      "AND d.client_order_id = e.client_order_id")
        return rel.fetchall()[0][0] if count_only else rel.to_arrow_table()
    finally:
        con.close()


def _differs(a, b) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    return abs(a - b) > REL_TOL * max(abs(a), abs(b)) + ABS_TOL


def _num(x):
    return None if x is None or x != x else float(x)


def _price(x):
    x = _num(x)
    return None if x == 0.0 else x


def dict_loop_order_mismatches(data: dict[str, pd.DataFrame],
                               db_read_at: pd.Timestamp = DB_READ_AT,
                               recency_guard_s: float = GUARD_S) -> list[tuple]:
    """The order findings of `reconciliation_diff`, row by row with Python dicts.

    Returns sorted tuples (kind, account, client_order_id, exchange_order_id, profile_id,
    attributable). Only the column extraction (`tolist`) is vectorised."""
    cutoff = (db_read_at - pd.Timedelta(seconds=recency_guard_s)).value
    db, ex, profiles = data["db_orders"], data["exchange_open_orders"], data["profiles"]

    def ns(series):  # timestamps as integer nanoseconds; null is the smallest int (not recent)
        values = pd.to_datetime(series, utc=True).dt.tz_convert(None)
        return values.to_numpy(dtype="datetime64[ns]").astype("int64").tolist()

    d_acct, d_coid, d_eoid = (db[c].tolist() for c in
                              ("exchange_account", "client_order_id", "exchange_order_id"))
    d_status, d_side, d_prof = (db[c].tolist() for c in ("status", "side", "profile_id"))
    d_qty, d_filled, d_price = (db[c].tolist() for c in ("qty", "filled_qty", "price"))
    d_upd = ns(db["updated_at"])
    e_acct, e_coid, e_eoid, e_side = (ex[c].tolist() for c in
                                      ("account", "client_order_id", "exchange_order_id", "side"))
    e_qty, e_filled, e_price = (ex[c].tolist() for c in ("qty", "filled_qty", "price"))
    e_created = ns(ex["created_at"])
    open_statuses = set(OPEN_ORDER_STATUSES)

    by_coid: dict[tuple, int] = {}
    by_eoid: dict[tuple, int] = {}
    for i, (a, c, e) in enumerate(zip(d_acct, d_coid, d_eoid)):
        by_coid[(a, c)] = i
        if e is not None and e == e:
            by_eoid[(a, e)] = i
    ex_coids = {(a, c) for a, c in zip(e_acct, e_coid)}
    tags: dict[tuple, set] = {}
    for a, t, p in zip(profiles["exchange_account"].tolist(), profiles["sub_tag"].tolist(),
                       profiles["profile_id"].tolist()):
        if isinstance(t, str) and t:
            tags.setdefault((a, t), set()).add(p)

    def recent_db(i):
        return d_upd[i] is not None and d_upd[i] > cutoff

    found: list[tuple] = []
    matched: set[int] = set()
    for j in range(len(e_acct)):
        a, c = e_acct[j], e_coid[j]
        e_recent = e_created[j] is not None and e_created[j] > cutoff
        i = by_coid.get((a, c))
        if i is None:
            k = by_eoid.get((a, e_eoid[j]))
            if k is not None and (d_acct[k], d_coid[k]) not in ex_coids:
                i = k
        if i is None:
            if not e_recent:
                parsed = parse_client_order_id(c)
                owners = tags.get((a, parsed.sub_tag), set()) if parsed else set()
                prof = next(iter(owners)) if len(owners) == 1 else None
                found.append(("missing_in_db", a, c, e_eoid[j], prof, prof is not None))
            continue
        matched.add(i)
        if e_recent or recent_db(i):
            continue
        eoid = e_eoid[j] if e_eoid[j] is not None else d_eoid[i]
        key = (a, d_coid[i], eoid, d_prof[i], True)
        if d_status[i] not in open_statuses:
            found.append(("status_drift",) + key)
            continue
        dq, eq = _num(d_qty[i]), _num(e_qty[j])
        df, ef = _num(d_filled[i]) or 0.0, _num(e_filled[j]) or 0.0
        if d_side[i] != e_side[j] or _differs(dq, eq) or _differs(df, ef):
            found.append(("qty_drift",) + key)
        if _differs(_price(d_price[i]), _price(e_price[j])):
            found.append(("price_drift",) + key)
    for i in range(len(d_acct)):
        if d_status[i] in open_statuses and i not in matched and not recent_db(i):
            eoid = d_eoid[i] if d_eoid[i] == d_eoid[i] else None
            found.append(("missing_from_exchange", d_acct[i], d_coid[i], eoid, d_prof[i], True))
    return sorted(found, key=lambda r: tuple("" if v is None else str(v) for v in r))


def diff_order_mismatches(result: pd.DataFrame) -> list[tuple]:
    """The diff's order findings in the shape `dict_loop_order_mismatches` returns."""
    rows = result[result["kind"].isin(ORDER_KINDS)]
    found = [(k, a, c, e, p, bool(t)) for k, a, c, e, p, t in zip(
        rows["kind"], rows["exchange_account"], rows["client_order_id"],
        rows["exchange_order_id"], rows["profile_id"], rows["attributable"])]
    return sorted(found, key=lambda r: tuple("" if v is None else str(v) for v in r))


# --------------------------------------------------------------------------- measurement

def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


METHODS = ("diff", "duckdb_join", "duckdb_count", "dict_loop")


def _methods(data: dict[str, pd.DataFrame]) -> dict:
    return {
        "diff": lambda: len(run_diff(data)),
        "duckdb_join": lambda: duckdb_join(data).num_rows,
        "duckdb_count": lambda: duckdb_join(data, count_only=True),
        "dict_loop": lambda: len(dict_loop_order_mismatches(data)),
    }


def _load(data_dir: str) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(Path(data_dir) / f"{name}.parquet") for name in FRAMES}


def _time_child(data_dir: str, repeats: dict[str, int]) -> dict:
    """Every method, round-robin (so a burst of load on the machine hits them alike)."""
    fns = _methods(_load(data_dir))
    for name in METHODS:
        fns[name]()  # warm-up: imports, first-call costs; not timed
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(max(repeats.values())):
        for name in METHODS:
            if r < repeats[name]:
                gc.collect()
                t0 = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t0)
    return {"times": times, "rows": fns["diff"]()}


def _memory_child(data_dir: str, method: str) -> dict:
    """Peak resident memory of one call, above the process's resident set just before it."""
    fn = _methods(_load(data_dir))[method]
    fn()  # warm-up, outside the measured peak
    gc.collect()
    rss_before = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (the peak) to the current resident set
    except OSError:
        return {"peak_bytes": None}
    fn()
    return {"peak_bytes": _status("VmHWM") - rss_before}


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _fmt_s(x: float) -> str:
    return f"{x:.3f}"


def _fmt_mb(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=0, help="timed repeats per method "
                        "(default: 7 up to 100k orders, 5 at 1M; the dict loop at most 3)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, data_dir, arg = args.child
        out = (_time_child(data_dir, json.loads(arg)) if kind == "time"
               else _memory_child(data_dir, arg))
        print(json.dumps(out))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = _load_average()
    tmp = tempfile.mkdtemp(prefix="recon-diff-bench-")
    rows = []
    try:
        for n in sizes:
            data = generate(n)
            # Honesty check: the dict loop finds exactly the diff's order findings.
            same = diff_order_mismatches(run_diff(data)) == dict_loop_order_mismatches(data)
            for name, frame in data.items():
                frame.to_parquet(Path(tmp) / f"{name}.parquet", index=False)
            n_ex = len(data["exchange_open_orders"])
            del data
            gc.collect()
            repeat = args.repeat or (7 if n <= 100_000 else 5)
            repeats = {m: repeat for m in METHODS}
            repeats["dict_loop"] = min(repeat, 3)
            timing = _child("time", tmp, json.dumps(repeats))
            res = {m: {"times": timing["times"][m],
                       "peak_bytes": _child("memory", tmp, m)["peak_bytes"]} for m in METHODS}
            res["diff"]["rows"] = timing["rows"]
            best = {m: min(r["times"]) for m, r in res.items()}
            med = {m: statistics.median(r["times"]) for m, r in res.items()}
            rows.append((n, n_ex, res, best, med, same))
            print(f"  measured {n:,} orders", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    header = ("db orders", "exch orders", "findings", "diff s", "duckdb join s",
              "duckdb count s", "dict loop s", "diff/join", "diff/count", "loop/diff",
              "diff MB", "join MB", "count MB", "loop MB", "loop==diff")
    table = []
    for n, n_ex, res, best, med, same in rows:
        table.append((
            f"{n:,}", f"{n_ex:,}", f"{res['diff']['rows']:,}",
            f"{_fmt_s(best['diff'])} ({_fmt_s(med['diff'])})",
            f"{_fmt_s(best['duckdb_join'])} ({_fmt_s(med['duckdb_join'])})",
            f"{_fmt_s(best['duckdb_count'])} ({_fmt_s(med['duckdb_count'])})",
            f"{_fmt_s(best['dict_loop'])} ({_fmt_s(med['dict_loop'])})",
            f"{best['diff'] / best['duckdb_join']:.2f} ({med['diff'] / med['duckdb_join']:.2f})",
            f"{best['diff'] / best['duckdb_count']:.2f} ({med['diff'] / med['duckdb_count']:.2f})",
            f"{best['dict_loop'] / best['diff']:.1f} ({med['dict_loop'] / med['diff']:.1f})",
            _fmt_mb(res["diff"]["peak_bytes"]), _fmt_mb(res["duckdb_join"]["peak_bytes"]),
            _fmt_mb(res["duckdb_count"]["peak_bytes"]), _fmt_mb(res["dict_loop"]["peak_bytes"]),
            "yes" if same else "NO",
        ))
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    line = " | ".join(h.rjust(w) for h, w in zip(header, widths))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for r in table:
        print(" | ".join(v.rjust(w) for v, w in zip(r, widths)))
    print("times: wall clock seconds, best of the repeats (median in brackets), the methods "
          "timed round-robin in one process; ratios: of the bests (of the medians).")
    print("MB: peak resident memory of one call above the process's resident set just before "
          "it, one process per method.")
    print(f"{os.cpu_count()} cpu(s); load average before {load_before}, after "
          f"{_load_average()}.")
    ok = all(r[5] for r in rows)
    if not ok:
        print("WARNING: the dict-loop baseline and the diff disagree", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
