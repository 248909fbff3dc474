"""Benchmark of full reconciliation cycles (issue 16): snapshots, diff, decisions (EXIT backfill,
parity heartbeat, watchdog) and corrections, against the simulator and a real PostgreSQL, for 1,
10 and 100 accounts of a book of 1,000 profiles, 20,000 open orders and 2,000 open slices
(100 accounts x 10 profiles; each profile 2 open slices with a resting EXIT each and 18 resting
ENTRY orders, on 10 symbols per account).

Two paths:

  in-process  the cycle job of each account run by `execute_in_process` one after the other in
              this process, then the correction sensor evaluated and its runs executed in this
              process; a sampler (every 5 ms, this thread's stack) splits the cycle's time into
              Dagster's own work and the project's (recon_assets and the libraries it calls),
              and names where the project's time goes.
  daemon      the deployed shape: `dagster code-server start` and `dagster-daemon run` with
              deploy/dagster.yaml (Postgres storage, the queued run coordinator), the schedule
              and sensors as shipped; each run is a process launched by the daemon. CPU is read
              from /proc for the process trees (code server with its run workers, daemon), the
              simulator and PostgreSQL separately.

Each round injects one drift per reconciled account (the exchange cancels a resting ENTRY behind
the database's back, 90 USD, under the watchdog's threshold) and measures the time from the
injection to the correction booked (recon.corrections.applied_at). The simulator runs in a
process of its own, so this process's CPU is the reconciler's.

    .venv/bin/python benchmarks/cycle.py [--accounts 1,10,100] [--rounds 3]
        [--daemon-accounts 1,10,100] [--daemon-minutes 3] [--skip-daemon]
        [--storage stock,pooled] [--shard-size 1,50] [--keep]

Starts its own PostgreSQL, simulator and Dagster processes, stops them by pid, writes nothing
into the repository. Times are this machine's (2 cores) and only indicative.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import math
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from recon_assets.core.request_weights import (CYCLE_PLAN_HEADROOM,  # noqa: E402
                                               WEIGHT_LIMIT_PER_MINUTE)
from recon_assets.db.migrate import migrate  # noqa: E402
from recon_assets.local_postgres import LocalPostgres, dagster_pg_env, free_port  # noqa: E402
from recon_assets.processes import reset_signals, stop_process_group  # noqa: E402
from recon_assets.simulator import SimulatorServer  # noqa: E402
from recon_assets.simulator.scenarios import Scenario, ScenarioBuilder  # noqa: E402
from recon_assets.simulator.server import credentials  # noqa: E402
from recon_assets.simulator.state import SimExchange  # noqa: E402

ACCOUNTS = 100
PROFILES_PER_ACCOUNT = 10
SLICES_PER_PROFILE = 2
RESTING_ENTRIES_PER_PROFILE = 18
SYMBOLS_PER_ACCOUNT = 10
CPU_TARGET_SHARE = 0.5  # of the machine's CPU over the minute
CORES = os.cpu_count() or 1
TICKS = os.sysconf("SC_CLK_TCK")
BIN = Path(sys.executable).parent


# ---- the book --------------------------------------------------------------------------------
def account_name(a: int) -> str:
    return f"acct{a:03d}"


def build_book(exchange: SimExchange) -> tuple[Scenario, dict[str, list[str]]]:
    """The book on the exchange and as the database believes it; per account, the client order
    ids of its resting ENTRY orders (what the drifts cancel, one per round)."""
    markets = [f"S{i:02d}USDT" for i in range(SYMBOLS_PER_ACCOUNT)]
    for m in markets:
        exchange.add_market(m, f"S{m[1:3]}", "100.00", "0.001", "0.01")
    exchange.set_rate_limits(weight_per_minute=10**9)  # weight is measured, not paced
    b = ScenarioBuilder(exchange, step_ms=50)  # 47,000 actions within the last hour
    resting: dict[str, list[str]] = collections.defaultdict(list)
    for a in range(ACCOUNTS):
        account = account_name(a)
        for p in range(PROFILES_PER_ACCOUNT):
            profile = f"p{a:03d}x{p}"
            b.profile(profile, account, f"P{a:03d}{p}", "100000")
            for s in range(SLICES_PER_PROFILE):
                symbol = markets[(p * SLICES_PER_PROFILE + s) % len(markets)]
                b.trade(profile, f"t{a:03d}{p}s{s}", symbol, "BUY", "1.000", "99.00", "110.00")
            for e in range(RESTING_ENTRIES_PER_PROFILE):
                ref = b.order(profile, f"t{a:03d}{p}e{e}", "ENTRY", markets[(p + e) % len(markets)], "BUY",
                              "1.000", "90.00")
                resting[account].append(ref.order.client_order_id)
    return Scenario("cycle-benchmark", "the cycle benchmark's book", db=b.rows()), resting


def seed(dsn: str, book: Scenario, accounts: set[str]) -> None:
    """The trading tables of `accounts` only (the daemon path's smaller books)."""
    profiles = {p["id"] for p in book.db["profiles"] if p["exchange_account"] in accounts}
    rows = {table: [r for r in book.db.get(table, [])
                    if (r.get("id") if table == "profiles" else r.get("profile_id")) in profiles]
            for table in book.db}
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for table in ("profiles", "orders", "trade_history", "positions", "applied_fills",
                      "capital_ledger"):
            if not rows.get(table):
                continue
            columns = sorted({c for r in rows[table] for c in r})
            cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                            f"({', '.join(['%s'] * len(columns))})",
                            [[r.get(c) for c in columns] for r in rows[table]])


# ---- the simulator in a process of its own ---------------------------------------------------
def _serve(exchange: SimExchange, port: int) -> None:
    server = SimulatorServer(port=port, exchange=exchange)
    server.start()
    threading.Event().wait()


def control(url: str, op: str, args: dict | None = None):
    request = urllib.request.Request(f"{url}/_control/{op}", data=json.dumps(args or {}).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# ---- CPU of process trees, from /proc ---------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process and of its children it has waited for)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (field 3); ppid is field 4, utime..cstime fields 14-17.
        table[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / TICKS)
    return table


def tree_cpu(root: int, table: dict | None = None) -> float:
    """CPU seconds of `root` and its live descendants (and of what they reaped)."""
    table = table if table is not None else _proc_table()
    children = collections.defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid][1]
        stack.extend(children.get(pid, []))
    return total


# ---- where the time goes: a stack sampler ----------------------------------------------------
class Sampler:
    """Samples one thread's stack every `every_s`: a sample is the project's when a frame of
    recon_assets is on the stack (with what it called: ccxt, duckdb, pandas, psycopg), else
    Dagster's; the project's samples are named by their innermost recon_assets function."""

    def __init__(self, thread_id: int, every_s: float = 0.005):
        self.thread_id, self.every_s = thread_id, every_s
        self.counts: collections.Counter = collections.Counter()
        self.where: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        package = str(ROOT / "recon_assets")
        while not self._stop.wait(self.every_s):
            frame = sys._current_frames().get(self.thread_id)
            ours = None
            while frame is not None:
                if frame.f_code.co_filename.startswith(package):
                    ours = frame
                    break
                frame = frame.f_back
            if ours is None:
                self.counts["dagster"] += 1
            else:
                self.counts["project"] += 1
                name = ours.f_code.co_filename.removeprefix(package + "/")
                self.where[f"{name}:{ours.f_code.co_name}"] += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def applied_at(dsn: str, cids: list[str]) -> dict[str, float]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT client_order_id, extract(epoch FROM applied_at) FROM "
                            "recon.corrections WHERE client_order_id = ANY(%s) AND NOT dry_run "
                            "AND outcome = 'applied'", (cids,)).fetchall()
    return {cid: float(t) for cid, t in rows}


def sessions(pg: LocalPostgres, *databases: str) -> dict[str, int]:
    """Connections ever opened to each database (pg_stat_database.sessions; a backend reports
    its session when it ends, so read after a short pause)."""
    time.sleep(1.5)
    with psycopg.connect(pg.dsn()) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute("SELECT datname, sessions FROM pg_stat_database WHERE datname = "
                            "ANY(%s)", (list(databases),)).fetchall()
    return {name: int(n) for name, n in rows}


STORAGES = ("stock", "pooled")


def dagster_home(base: Path, storage_url: str, storage: str = "pooled") -> Path:
    """$DAGSTER_HOME with deploy/dagster.yaml: its storage (`pooled`, PooledPostgresStorage), or
    dagster-postgres's own with the same database settings (`stock`, the baseline)."""
    import yaml

    home = base / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    if storage == "stock":
        config["storage"] = {"postgres": {
            "postgres_db": config["storage"]["custom"]["config"]["postgres_db"]}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    os.environ.update(dagster_pg_env(storage_url))
    return home


# ---- the in-process path ---------------------------------------------------------------------
def in_process(pg: LocalPostgres, sim_url: str, creds: dict, book: Scenario,
               resting: dict[str, list[str]], counts: list[int], rounds: int,
               storage: str, first_round: int = 0) -> list[dict]:
    import dagster as dg

    from recon_assets.definitions import build_defs
    from recon_assets.defs.partitions import exchange_account_partitions, profile_partitions
    from recon_assets.resources.alerts import AlertWebhook
    from recon_assets.resources.database import PostgresStore
    from recon_assets.resources.exchange import ExchangeResource
    from recon_assets.resources.io_manager import PostgresFrameIOManager
    from recon_assets.settings import ReconSettings

    trading_db, dagster_db = f"trading_inproc_{storage}", f"dagster_inproc_{storage}"
    dsn = pg.create_database(trading_db)
    migrate(dsn)
    seed(dsn, book, {account_name(a) for a in range(ACCOUNTS)})
    home = dagster_home(Path(tempfile.mkdtemp(prefix="recon-bench-home-")),
                        pg.create_database(dagster_db), storage)
    store = PostgresStore(dsn=dsn)
    defs = build_defs({
        "settings": ReconSettings(), "database": store,
        "io_manager": PostgresFrameIOManager(database=store), "alert_webhook": AlertWebhook(),
        "exchange": ExchangeResource(credentials=json.dumps(creds), api_base_url=sim_url,
                                     enable_rate_limit=False, weight_limit_per_minute=10**9)})
    cycle_job = defs.resolve_job_def("reconciliation_cycle")
    correction_job = defs.resolve_job_def("lifecycle_correction")
    sensor = defs.get_sensor_def("lifecycle_correction_sensor")
    out = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name,
                                        [account_name(a) for a in range(ACCOUNTS)])
        instance.add_dynamic_partitions(profile_partitions.name,
                                        sorted(p["id"] for p in book.db["profiles"]))
        cursor = None
        drift_round = first_round
        # A warm-up round (the first cycle of a fresh process reads markets and the fill
        # history from the start; the figures are of the steady state).
        for n in [0, *counts]:
            accounts = [account_name(a) for a in range(max(n, 1))]
            per_round = []
            # Rounds of the 100-account cycle take minutes each: as many as fit in 100 cycles.
            for _ in range(max(1, min(rounds, 100 // n)) if n else 1):
                cids = [resting[a][drift_round] for a in accounts]
                drift_round += 1
                conns0 = sessions(pg, dagster_db, trading_db)
                injected = {}
                for account, cid in zip(accounts, cids):
                    control(sim_url, "cancel_order", {"account": account, "client_order_id": cid})
                    injected[cid] = time.time()
                control(sim_url, "reset_requests")
                ru0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                with Sampler(threading.get_ident()) as sampler:
                    failed = 0
                    for account in accounts:
                        result = cycle_job.execute_in_process(
                            instance=instance, partition_key=account,
                            tags={"recon/account": account}, raise_on_error=False)
                        failed += not result.success
                ru1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                requests = control(sim_url, "reset_requests")
                with dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(),
                                             cursor=cursor, definitions=defs,
                                             resources={"database": store}) as context:
                    tick = sensor.evaluate_tick(context)
                cursor = tick.cursor
                for r in tick.run_requests:
                    correction_job.execute_in_process(
                        run_config=r.run_config, instance=instance, tags=r.tags,
                        partition_key=r.partition_key, raise_on_error=False)
                ru2, wall2 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                booked = applied_at(dsn, cids)
                # Connections of the round: its cycles and its corrections.
                conns1 = sessions(pg, dagster_db, trading_db)
                weights = [_request_weight(instance, a) for a in accounts]
                per_round.append({
                    "wall": wall1 - wall0, "cpu": _cpu(ru1) - _cpu(ru0),
                    "correction_wall": wall2 - wall1, "correction_cpu": _cpu(ru2) - _cpu(ru1),
                    "requests": sum(v for k, v in requests.items() if not k.split(" ", 1)[-1]
                                    .startswith("/_control")),
                    "weight": sum(w for w in weights if w is not None),
                    "samples": dict(sampler.counts), "where": sampler.where,
                    "latencies": [booked[c] - injected[c] for c in cids if c in booked],
                    "uncorrected": sum(c not in booked for c in cids), "failed": failed,
                    "corrections": len(tick.run_requests),
                    "dagster_connections": conns1[dagster_db] - conns0[dagster_db],
                    "trading_connections": conns1[trading_db] - conns0[trading_db]})
            if not n:
                continue  # the warm-up
            out.append({**_summary("in-process", n, per_round), "storage": storage})
    return out


def _cpu(ru) -> float:
    return ru.ru_utime + ru.ru_stime


def _request_weight(instance, account: str) -> float | None:
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("exchange_positions"), asset_partitions=[account]), limit=1).records
    if not records:
        return None
    entry = records[0].asset_materialization.metadata.get("request_weight")
    return float(entry.value) if entry is not None else None


def _summary(path: str, n: int, rounds: list[dict]) -> dict:
    samples = collections.Counter()
    where = collections.Counter()
    for r in rounds:
        samples.update(r["samples"])
        where.update(r["where"])
    total = sum(samples.values()) or 1
    latencies = [x for r in rounds for x in r["latencies"]]
    k = len(rounds)
    return {
        "path": path, "accounts": n, "rounds": k,
        "cycle_wall_s": sum(r["wall"] for r in rounds) / k,
        "cycle_cpu_s": sum(r["cpu"] for r in rounds) / k,
        "correction_wall_s": sum(r["correction_wall"] for r in rounds) / k,
        "correction_cpu_s": sum(r["correction_cpu"] for r in rounds) / k,
        "dagster_share": samples["dagster"] / total,
        "largest": [(name, count / total) for name, count in where.most_common(6)],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "requests_per_account": sum(r["requests"] for r in rounds) / (k * n),
        "weight_per_account": sum(r["weight"] for r in rounds) / (k * n),
        "latency_p50_s": percentile(latencies, 0.5), "latency_p95_s": percentile(latencies, 0.95),
        "drifts": len(latencies) + sum(r["uncorrected"] for r in rounds),
        "uncorrected": sum(r["uncorrected"] for r in rounds),
        "failed_cycles": sum(r["failed"] for r in rounds),
        "dagster_connections_per_account": sum(r["dagster_connections"] for r in rounds) / (k * n),
        "trading_connections_per_account": sum(r["trading_connections"] for r in rounds) / (k * n),
        "project_cpu_per_account_s": (sum(r["cpu"] for r in rounds) / (k * n))
        * (1 - samples["dagster"] / total),
    }


# ---- the daemon path -------------------------------------------------------------------------
def daemon(pg: LocalPostgres, sim_url: str, sim_pid: int, creds: dict, book: Scenario,
           resting: dict[str, list[str]], n: int, minutes: float, base: Path,
           first_round: int, storage: str, shard_size: int = 1) -> dict:
    import dagster as dg

    from recon_assets.defs.partitions import exchange_account_partitions, profile_partitions

    accounts = [account_name(a) for a in range(n)]
    trading_db = f"trading_daemon{n}_{storage}_s{shard_size}"
    dagster_db = f"dagster_daemon{n}_{storage}_s{shard_size}"
    dsn = pg.create_database(trading_db)
    migrate(dsn)
    seed(dsn, book, set(accounts))
    work = base / f"daemon{n}_{storage}_s{shard_size}"
    work.mkdir()
    home = dagster_home(work, pg.create_database(dagster_db), storage)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(exchange_account_partitions.name, accounts)
        instance.add_dynamic_partitions(profile_partitions.name, sorted(
            p["id"] for p in book.db["profiles"] if p["exchange_account"] in accounts))
    port = free_port()
    (work / "workspace.yaml").write_text(
        f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n"
        "      location_name: recon_assets\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "RECON_DATABASE_URL": dsn,
           "RECON_EXCHANGE_CREDENTIALS": json.dumps(creds), "RECON_EXCHANGE_API_BASE_URL": sim_url,
           "RECON_EXCHANGE_ENABLE_RATE_LIMIT": "false",
           "RECON_EXCHANGE_WEIGHT_LIMIT_PER_MINUTE": str(10**9),
           # 1: a run (a process) per account; more: shard runs of that many accounts.
           "RECON_CYCLE_SHARD_SIZE": str(shard_size)}
    procs = {}
    for name, argv in (
            ("code-server", ["dagster", "code-server", "start", "-h", "127.0.0.1", "-p", str(port),
                             "-m", "recon_assets.definitions", "-a", "defs",
                             "--location-name", "recon_assets"]),
            ("daemon", ["dagster-daemon", "run", "-w", str(work / "workspace.yaml")])):
        log = open(work / f"{name}.log", "wb")
        procs[name] = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, preexec_fn=reset_signals,
                                       start_new_session=True, cwd=work)
        log.close()
    injected: dict[str, float] = {}
    try:
        # Wait for the first scheduled cycle to finish: the location is loaded and warm.
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.time() + 300
            while not _runs(instance, "reconciliation_cycle", finished=True):
                if time.time() > deadline or any(p.poll() is not None for p in procs.values()):
                    raise RuntimeError(f"no cycle finished; see {work}")
                time.sleep(2)
            # Measure from the next minute on, for `minutes` minutes.
            now = time.time()
            start = (int(now // 60) + 1) * 60 + 1
            time.sleep(start - now)
            conns0 = sessions(pg, dagster_db, trading_db)
            before = _cpu_split(procs, sim_pid, pg)
            round_no = first_round
            end = start + minutes * 60
            while time.time() < end:
                # One drift per account a few seconds after each tick (at most 10 a minute, so
                # the corrections' runs do not swamp what is measured at 100 accounts).
                for account in accounts[: min(n, 10)]:
                    cid = resting[account][round_no]
                    control(sim_url, "cancel_order", {"account": account, "client_order_id": cid})
                    injected[cid] = time.time()
                round_no += 1
                next_tick = (int(time.time() // 60) + 1) * 60 + 1
                time.sleep(max(0.0, min(next_tick, end) - time.time()))
            after = _cpu_split(procs, sim_pid, pg)
            conns1 = sessions(pg, dagster_db, trading_db)
            # Cycles that finished inside the window, and what is still queued or running.
            records = instance.get_run_records(dg.RunsFilter(job_name="reconciliation_cycle"))
            done = [r.dagster_run for r in records
                    if r.end_time is not None and start <= r.end_time < end]
            waiting = [r.dagster_run for r in records if r.dagster_run.status.value
                       not in ("SUCCESS", "FAILURE", "CANCELED")]
            shard_runs = instance.get_run_records(dg.RunsFilter(job_name="reconciliation_shard"))
            waiting_shards = [r for r in shard_runs if r.dagster_run.status.value
                              not in ("SUCCESS", "FAILURE", "CANCELED")]
            shards_done = [r for r in shard_runs
                           if r.end_time is not None and start <= r.end_time < end]
        # Corrections still on their way get a minute more (their latency is what it is).
        deadline = time.time() + 90
        while time.time() < deadline and len(applied_at(dsn, list(injected))) < len(injected):
            time.sleep(2)
        booked = applied_at(dsn, list(injected))
    finally:
        for proc in procs.values():
            stop_process_group(proc)
    latencies = [booked[c] - t for c, t in injected.items() if c in booked]
    cpu = {k: after[k] - before[k] for k in after}
    window = minutes * 60
    return {"path": "daemon", "storage": storage, "shard_size": shard_size, "accounts": n,
            "minutes": minutes, "shard_runs_per_min": len(shards_done) / minutes,
            "shards_waiting_at_end": len(waiting_shards),
            "cycles_done_per_min": len(done) / minutes,
            "cycles_failed": sum(r.status.value == "FAILURE" for r in done),
            "cycles_waiting_at_end": len(waiting),
            "reconciler_cpu_per_min_s": cpu["reconciler"] / minutes,
            "reconciler_cpu_share": cpu["reconciler"] / (window * CORES),
            "postgres_cpu_per_min_s": cpu["postgres"] / minutes,
            "simulator_cpu_per_min_s": cpu["simulator"] / minutes,
            "cpu_per_cycle_s": cpu["reconciler"] / len(done) if done else float("nan"),
            "latency_p50_s": percentile(latencies, 0.5), "latency_p95_s": percentile(latencies, 0.95),
            "drifts": len(injected), "uncorrected": len(injected) - len(latencies),
            "dagster_connections_per_min": (conns1[dagster_db] - conns0[dagster_db]) / minutes,
            "trading_connections_per_min": (conns1[trading_db] - conns0[trading_db]) / minutes}


def _runs(instance, job: str, finished: bool = False):
    import dagster as dg

    statuses = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE] if finished else None
    return [r.dagster_run for r in instance.get_run_records(
        dg.RunsFilter(job_name=job, statuses=statuses))]


def _cpu_split(procs: dict, sim_pid: int, pg: LocalPostgres) -> dict[str, float]:
    table = _proc_table()
    return {"reconciler": sum(tree_cpu(p.pid, table) for p in procs.values()),
            "simulator": tree_cpu(sim_pid, table), "postgres": tree_cpu(_postmaster(pg), table)}


def _postmaster(pg: LocalPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


# ---- the report ------------------------------------------------------------------------------
def report(rows: list[dict]) -> None:
    print("\nin-process path: one cycle = every account's cycle run one after the other in this "
          "process; then the correction sensor and its runs")
    header = (f"{'storage':>7} {'accounts':>8} {'wall s':>8} {'cpu s':>8} {'cpu/acct':>8} {'dagster':>8} "
              f"{'corr s':>7} {'req/acct':>8} {'wt/acct':>8} {'p50 s':>6} {'p95 s':>6} "
              f"{'rss MiB':>7} {'fail':>4} {'dg conn':>7} {'db conn':>7}")
    print(header)
    print("-" * len(header))
    inproc = [r for r in rows if r["path"] == "in-process"]
    for r in inproc:
        print(f"{r['storage']:>7} {r['accounts']:>8} {r['cycle_wall_s']:>8.2f} {r['cycle_cpu_s']:>8.2f} "
              f"{r['cycle_cpu_s'] / r['accounts']:>8.3f} {r['dagster_share']:>8.0%} "
              f"{r['correction_wall_s']:>7.2f} {r['requests_per_account']:>8.1f} "
              f"{r['weight_per_account']:>8.1f} {r['latency_p50_s']:>6.1f} "
              f"{r['latency_p95_s']:>6.1f} {r['peak_rss_mib']:>7.0f} {r['failed_cycles']:>4} "
              f"{r['dagster_connections_per_account']:>7.0f} "
              f"{r['trading_connections_per_account']:>7.0f}")
    if inproc:
        print("\nwhere the project's share of the largest in-process cycle goes (share of all "
              "samples):")
        for name, share in inproc[-1]["largest"]:
            print(f"  {share:6.1%}  {name}")
    daemon_rows = [r for r in rows if r["path"] == "daemon"]
    if daemon_rows:
        print(f"\ndaemon path: the schedule every minute, each run a process ({CORES} cores; "
              f"target: 100 accounts a minute within {CPU_TARGET_SHARE:.0%} of the CPU)")
        header = (f"{'storage':>7} {'shard':>5} {'accounts':>8} {'cycles/min':>10} {'waiting':>7} {'failed':>6} "
                  f"{'cpu s/min':>9} {'cpu share':>9} {'cpu/cycle':>9} {'pg s/min':>8} "
                  f"{'sim s/min':>9} {'p50 s':>6} {'p95 s':>6} {'drifts':>6} {'missed':>6} "
                  f"{'dg conn/min':>11}")
        print(header)
        print("-" * len(header))
        for r in daemon_rows:
            print(f"{r['storage']:>7} {r['shard_size']:>5} {r['accounts']:>8} "
                  f"{r['cycles_done_per_min']:>10.1f} "
                  f"{r['cycles_waiting_at_end'] + r['shards_waiting_at_end']:>7} "
                  f"{r['cycles_failed']:>6} "
                  f"{r['reconciler_cpu_per_min_s']:>9.1f} {r['reconciler_cpu_share']:>9.0%} "
                  f"{r['cpu_per_cycle_s']:>9.2f} {r['postgres_cpu_per_min_s']:>8.1f} "
                  f"{r['simulator_cpu_per_min_s']:>9.1f} {r['latency_p50_s']:>6.1f} "
                  f"{r['latency_p95_s']:>6.1f} {r['drifts']:>6} {r['uncorrected']:>6} "
                  f"{r['dagster_connections_per_min']:>11.0f}")
    ratios(inproc, daemon_rows)
    # The model from the deployed storage's figures (the baseline's when only it was measured).
    deployed = [r for r in inproc if r["storage"] == "pooled"] or inproc
    model(deployed, [r for r in daemon_rows if r["storage"] == "pooled"] or daemon_rows)
    print("\n" + json.dumps(rows, default=str))


def ratios(inproc: list[dict], daemon_rows: list[dict]) -> None:
    """The pooled storage against the stock one (the baseline), where both were measured."""
    lines = []
    for rows, label, figures in (
            (inproc, "in-process", (("cycle_wall_s", "wall"), ("cycle_cpu_s", "CPU"),
                                    ("dagster_connections_per_account", "Dagster connections"))),
            (daemon_rows, "daemon", (("cycles_done_per_min", "cycles/min"),
                                     ("cpu_per_cycle_s", "CPU per cycle"),
                                     ("postgres_cpu_per_min_s", "PostgreSQL CPU/min"),
                                     ("latency_p95_s", "p95 drift to correction"),
                                     ("dagster_connections_per_min", "Dagster connections/min")))):
        by = {(r["storage"], r["accounts"]): r for r in rows if r.get("shard_size", 1) == 1}
        for (storage, n), pooled in sorted(by.items()):
            stock = by.get(("stock", n))
            if storage != "pooled" or stock is None:
                continue
            parts = [f"{name} {pooled[key] / stock[key]:.2f}x ({stock[key]:.1f} -> {pooled[key]:.1f})"
                     for key, name in figures if stock[key]]
            lines.append(f"  {label}, {n} accounts: " + "; ".join(parts))
    if lines:
        print("\npooled storage against the stock dagster-postgres storage (pooled / stock):")
        print("\n".join(lines))
    lines = []
    by = {(r["storage"], r["accounts"], r["shard_size"]): r for r in daemon_rows}
    for (storage, n, size), sharded in sorted(by.items()):
        single = by.get((storage, n, 1))
        if size == 1 or single is None:
            continue
        parts = [f"{name} {sharded[key] / single[key]:.2f}x ({single[key]:.1f} -> {sharded[key]:.1f})"
                 for key, name in (("cycles_done_per_min", "cycles/min"),
                                   ("cpu_per_cycle_s", "CPU per cycle"),
                                   ("reconciler_cpu_share", "CPU share"),
                                   ("latency_p95_s", "p95 drift to correction"))
                 if single[key] and single[key] == single[key]]
        lines.append(f"  daemon, {storage} storage, {n} accounts, shards of {size}: "
                     + "; ".join(parts))
    if lines:
        print("\nshard runs against a run per account (the baseline; shard / per-account):")
        print("\n".join(lines))


# Binance USD-M's budget per IP and minute, less the headroom the cycle spread leaves.
IP_WEIGHT_BUDGET = WEIGHT_LIMIT_PER_MINUTE * (1 - CYCLE_PLAN_HEADROOM)


def model(inproc: list[dict], daemon_rows: list[dict], accounts: int = 10_000) -> None:
    """10,000 accounts a minute on Kubernetes, from the measured per-account costs: today's
    shape (a run, so a pod, per account) and, as an estimate, runs over shards of accounts."""
    if not inproc:
        return
    big = inproc[-1]
    per_account_cpu = big["cycle_cpu_s"] / big["accounts"]
    project_cpu = big["project_cpu_per_account_s"]
    weight = big["weight_per_account"]
    ips = math.ceil(accounts * weight / IP_WEIGHT_BUDGET)
    print(f"\nmodel: {accounts:,} accounts a minute on Kubernetes (from the figures above)")
    print(f"  exchange: {weight:.0f} weight per account and cycle -> {accounts * weight:,.0f} a "
          f"minute -> at least {ips} egress IPs at {IP_WEIGHT_BUDGET:.0f} each "
          f"({int(IP_WEIGHT_BUDGET // max(weight, 1))} accounts per IP)")
    run_cpu = per_account_cpu
    measured = [r for r in daemon_rows if r["cycles_done_per_min"] > 0 and r["shard_size"] == 1]
    if measured:  # the daemon path's CPU per finished cycle (its process start, the sensors)
        run_cpu = max(measured, key=lambda r: r["cycles_done_per_min"])["cpu_per_cycle_s"]
    per_run_conns = big["dagster_connections_per_account"]
    print(f"  today (a run and a pod per account): {accounts:,} pods a minute at {run_cpu:.1f} "
          f"CPU-s each = {accounts * run_cpu / 60:,.0f} cores busy; Dagster's database sees "
          f"{accounts * per_run_conns / 60:,.0f} new connections a second "
          f"({per_run_conns:.0f} per run); the trading database "
          f"{accounts * big['trading_connections_per_account'] / 60:,.0f} a second")
    fixed = max(run_cpu - project_cpu, 0.0)
    for shard in (100, 500):
        runs = math.ceil(accounts / shard)
        cores = (accounts * project_cpu + runs * fixed) / 60
        print(f"  estimate, shards of {shard} accounts per run: {runs} runs and pods "
              f"a minute; >= {cores:,.1f} cores ({project_cpu:.2f} CPU-s of reconciliation per "
              f"account, {fixed:.1f} CPU-s of Dagster and process per run, Dagster's per-account "
              f"events not counted); {runs * per_run_conns / 60:,.1f} new Dagster connections "
              "a second plus the per-account events'")
    for r in (r for r in daemon_rows if r["shard_size"] > 1 and r["cycles_done_per_min"] > 0):
        per_cycle = r["cpu_per_cycle_s"]
        print(f"  measured, shards of {r['shard_size']} through the daemon ({r['accounts']} "
              f"accounts): {per_cycle:.2f} CPU-s per account cycle, corrections and sensors "
              f"included -> {accounts * per_cycle / 60:,.0f} cores for {accounts:,} accounts "
              f"a minute, {math.ceil(accounts / r['shard_size'])} shard runs and pods a minute")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", default="1,10,100")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--daemon-accounts", default="1,10,100")
    parser.add_argument("--daemon-minutes", type=float, default=3)
    parser.add_argument("--skip-daemon", action="store_true")
    parser.add_argument("--storage", default="pooled",
                        help="Dagster storages to measure, of: stock (dagster-postgres's, the "
                             "baseline), pooled (deploy/dagster.yaml's); e.g. stock,pooled")
    parser.add_argument("--shard-size", default="1",
                        help="RECON_CYCLE_SHARD_SIZE values for the daemon path: 1 = a run per "
                             "account (the baseline), more = shard runs; e.g. 1,50")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working folder (Dagster's logs of the daemon path)")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.accounts.split(",") if x]
    daemon_counts = [] if args.skip_daemon else [int(x) for x in args.daemon_accounts.split(",") if x]
    storages = [x for x in args.storage.split(",") if x]
    shard_sizes = [int(x) for x in args.shard_size.split(",") if x]
    if not storages or set(storages) - set(STORAGES):
        parser.error(f"--storage takes {', '.join(STORAGES)}, comma-separated")

    base = Path(tempfile.mkdtemp(prefix="recon-bench-cycle-"))
    os.chmod(base, 0o755)
    pg = LocalPostgres(str(base / "pg"))
    exchange = SimExchange()
    sim_proc = None
    rows: list[dict] = []
    try:
        started = time.perf_counter()
        book, resting = build_book(exchange)
        creds = credentials(exchange)
        port = free_port()
        sim_proc = multiprocessing.get_context("fork").Process(
            target=_serve, args=(exchange, port), daemon=True)
        sim_proc.start()
        sim_url = f"http://127.0.0.1:{port}"
        pg.start()
        for _ in range(100):
            try:
                control(sim_url, "reset_requests")
                break
            except OSError:
                time.sleep(0.1)
        print(f"book: {len(book.db['profiles'])} profiles, "
              f"{sum(o['status'] == 'open' for o in book.db['orders'])} open orders, "
              f"{sum(s['status'] == 'open' for s in book.db['trade_history'])} open slices, "
              f"{ACCOUNTS} accounts (built in {time.perf_counter() - started:.1f} s)", flush=True)
        # Each path drifts resting orders of its own (every path has its own trading database,
        # but the simulator is shared).
        first_round = 0
        for storage in storages if counts else ():
            rows += in_process(pg, sim_url, creds, book, resting, counts, args.rounds, storage,
                               first_round)
            first_round += 1 + sum(max(1, min(args.rounds, 100 // n)) for n in counts)
        for n in daemon_counts:
            for storage in storages:
                for size in shard_sizes:
                    print(f"daemon path, {storage} storage, shard size {size}, {n} accounts, "
                          f"{args.daemon_minutes:g} minutes ...", flush=True)
                    rows.append(daemon(pg, sim_url, sim_proc.pid, creds, book, resting, n,
                                       args.daemon_minutes, base, first_round, storage, size))
                    first_round += int(args.daemon_minutes) + 2
    except Exception:
        traceback.print_exc()
        report(rows)
        return 1
    finally:
        if sim_proc is not None:
            sim_proc.kill()
            sim_proc.join(10)
        pg.stop()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    report(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
