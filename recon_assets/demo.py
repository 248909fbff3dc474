"""`recon demo`: the whole reconciliation loop on embedded defaults, nothing to configure.

    recon demo [--dir .demo] [--ui-port 3000] [--health-port 9187] [--drift-every-s 45]
    recon demo --once

It starts, in a folder of the project (`.demo/`, reused by the next run):

- a local PostgreSQL (`LocalPostgres`, the same class the tests use) with the migrations applied
  to a `recon_demo` database, which is re-seeded on every start: the exchange simulator keeps its
  state in memory, so both sides start again from the same demo scenario;
- the exchange simulator (Binance USD-M dialect, real ccxt over HTTP) with the `demo` scenario:
  three profiles on two shared accounts and every divergence of the runbook;
- the runbook's `/internal/health` and `/metrics` (`recon health`) on 127.0.0.1;
- a stand-in trading app that keeps placing ENTRY orders and lets the exchange fill them behind
  the database's back, so drift keeps arriving;
- `dagster dev` with the schedule and sensors running (UI on 127.0.0.1).

Ctrl-C (or SIGTERM) stops every process it started. `--once` runs one full cycle headless
(snapshots, diff, corrections, a second diff) and prints a readable summary instead of the UI.
"""

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psycopg

from recon_assets.core.attribution import make_client_order_id
from recon_assets.db.migrate import migrate
from recon_assets.local_postgres import LocalPostgres, free_port
from recon_assets.metrics.health import load_state
from recon_assets.metrics.server import make_server
from recon_assets.processes import reset_signals, stop_on_signals, stop_process_group
from recon_assets.simulator import SimulatorServer

DEMO_DB = "recon_demo"
REPO = Path(__file__).resolve().parent.parent

# The demo Dagster instance: local storage in .demo/dagster_home, queued runs with one
# reconciler per profile (the deployment's dagster.yaml uses Postgres storage instead).
DEMO_INSTANCE_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: recon/profile
        value:
          applyLimitPerUniqueValue: true
        limit: 1
      - key: recon/account
        value:
          applyLimitPerUniqueValue: true
        limit: 1
      - key: recon/job
        value: policy_replay
        limit: 1
telemetry:
  enabled: false
"""


@dataclass
class DemoStack:
    """The demo's servers; `stop()` stops each one it started, by pid or handle."""

    base: Path
    pg: LocalPostgres | None = None
    sim: SimulatorServer | None = None
    health: object | None = None
    drift: "TradingAppStandIn | None" = None
    dagster: subprocess.Popen | None = None
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return self.pg.dsn(DEMO_DB)

    def env(self) -> dict[str, str]:
        """The code location's configuration for this demo (simulator-only credentials)."""
        return {
            "RECON_DATABASE_URL": self.dsn,
            "RECON_EXCHANGE_CREDENTIALS": json.dumps(self.sim.credentials()),
            "RECON_EXCHANGE_API_BASE_URL": self.sim.url,
        }

    def stop(self) -> None:
        if self.dagster is not None:
            stop_process_group(self.dagster)
        if self.drift is not None:
            self.drift.stop()
        if self.health is not None:
            self.health.shutdown()
            self.health.server_close()
        if self.sim is not None:
            self.sim.stop()
        if self.pg is not None:
            self.pg.stop()


def start_stack(base: Path, health_port: int = 0) -> DemoStack:
    """PostgreSQL (re-seeded demo database), the simulator with the demo scenario, health."""
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # the server runs as the postgres user when we are root
    stack = DemoStack(base)
    try:
        stack.pg = LocalPostgres(base / "pg")
        stack.pg.start()
        stack.pg.drop_database(DEMO_DB)
        stack.pg.create_database(DEMO_DB)
        migrate(stack.dsn)
        stack.sim = SimulatorServer(port=0, scenario="demo")
        stack.sim.start()
        stack.sim.scenario.seed_database(stack.dsn)
        stack.health = make_server(stack.dsn, port=health_port)
        thread = threading.Thread(target=stack.health.serve_forever, daemon=True, name="recon-health")
        thread.start()
        stack.threads.append(thread)
    except BaseException:
        stack.stop()
        raise
    return stack


class TradingAppStandIn:
    """Stands in for the trading bots: every `interval_s` it places a new ENTRY order (booked in
    the database like the app would) for the next profile whose trading gate is open
    (`recon_may_trade`), and on the next tick the exchange fills it behind the database's back,
    which the loop must detect and correct through reconcileEntryFill."""

    SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    PROFILES = (("alpha", "acct1", "ALP"), ("beta", "acct1", "BET"), ("gamma", "acct2", "GAM"))

    def __init__(self, sim: SimulatorServer, dsn: str, interval_s: float):
        self.sim, self.dsn, self.interval_s = sim, dsn, interval_s
        self._stop = threading.Event()
        self._pending: list[tuple[str, str]] = []
        self._n = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="demo-trading-app")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the demo must keep running
                print(f"demo trading app: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def step(self) -> None:
        # The exchange fills what the app placed last time; the app does not hear about it.
        for account, cid in self._pending:
            self.sim.exchange.fill_order(account, client_order_id=cid)
        self._pending.clear()
        self._n += 1
        profile, account, sub_tag = self.PROFILES[self._n % len(self.PROFILES)]
        # The trading gate, as the README tells a trading app to read it: nothing new starts
        # while the profile is reconciling or paused.
        with psycopg.connect(self.dsn) as conn:
            (may_trade,) = conn.execute("SELECT recon_may_trade(%s)", (profile,)).fetchone()
        if not may_trade:
            return
        symbol = random.choice(self.SYMBOLS)
        market = self.sim.exchange.markets[symbol]
        price = (market.mark_price * Decimal("0.98")).quantize(market.tick_size)
        qty = max(market.step_size, (Decimal(50) / price).quantize(market.step_size))
        trade_id = f"d{int(time.time())}{self._n}"
        cid = make_client_order_id(sub_tag, trade_id, "ENTRY")
        order = self.sim.exchange.place_order(account, symbol, "BUY", "LIMIT", str(qty), str(price),
                                              client_order_id=cid)
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, "
                "exchange_order_id, status, qty, price) VALUES (%s, %s, 'ENTRY', %s, 'buy', %s, %s, "
                "'open', %s, %s)", (profile, trade_id, market.unified, cid, str(order.order_id), qty, price))
        self._pending.append((account, cid))


def _prepare_dagster_home(base: Path, scenario) -> Path:
    home = base / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DEMO_INSTANCE_YAML)
    # Add the account and profile partitions now, so the first scheduled cycle and the first
    # corrections do not wait for the partitions sensor's first tick. And the runs the previous
    # demo session left unfinished would act on the database that was just re-seeded: they are
    # canceled as superseded (a canceled run is no failed cycle).
    script = ("import dagster as dg, json, sys; inst = dg.DagsterInstance.get(); "
              "S = dg.DagsterRunStatus; "
              "[inst.report_run_canceled(r, message='superseded: the demo restarted and "
              "re-seeded its database') for r in inst.get_runs(dg.RunsFilter(statuses=["
              "S.QUEUED, S.NOT_STARTED, S.STARTING, S.STARTED, S.CANCELING]))]; "
              "from recon_assets.defs import partitions as p; "
              "wanted = json.loads(sys.argv[1]); "
              "[inst.add_dynamic_partitions(d.name, sorted(set(wanted[d.name]) - set("
              "inst.get_dynamic_partitions(d.name)))) "
              "for d in (p.exchange_account_partitions, p.profile_partitions)]")
    wanted = {"exchange_account": scenario.accounts(),
              "profile": sorted(p["id"] for p in scenario.db["profiles"])}
    subprocess.run([sys.executable, "-c", script, json.dumps(wanted)], check=True,
                   env={**os.environ, "DAGSTER_HOME": str(home)})
    return home


UI_START_TIMEOUT_S = 180


def _ui_answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def run_ui(stack: DemoStack, ui_port: int, drift_every_s: float, stop: threading.Event) -> int:
    home = _prepare_dagster_home(stack.base, stack.sim.scenario)
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    env = {**os.environ, **stack.env(), "DAGSTER_HOME": str(home)}
    stack.dagster = subprocess.Popen(
        [dagster, "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(ui_port)],
        cwd=home, env=env, preexec_fn=reset_signals, start_new_session=True)
    stack.drift = TradingAppStandIn(stack.sim, stack.dsn, drift_every_s)
    stack.drift.start()
    health = stack.health.server_address
    # "Up" means the UI answers (dagster dev takes a few seconds to load the code location).
    print(f"starting the Dagster UI on http://127.0.0.1:{ui_port} ...", flush=True)
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    while not _ui_answers(ui_port):
        if stack.dagster.poll() is not None:
            print(f"dagster dev exited with {stack.dagster.returncode} before the UI answered",
                  file=sys.stderr)
            return 1
        if stop.wait(0.5):
            print("stopping the demo...", flush=True)
            return 0
        if time.monotonic() > deadline:
            print(f"the Dagster UI did not answer within {UI_START_TIMEOUT_S} s", file=sys.stderr)
            return 1
    print(f"""
recon demo is up:
  Dagster UI        http://127.0.0.1:{ui_port}   (the reconciliation_cycle_schedule runs every minute)
  health / metrics  http://{health[0]}:{health[1]}/internal/health   http://{health[0]}:{health[1]}/metrics
  exchange sim      {stack.sim.url}   (scenario: demo)
  database          {stack.pg.dsn(DEMO_DB)}
Press Ctrl-C to stop everything.
""", flush=True)
    while not stop.wait(1.0):
        if stack.dagster.poll() is not None:
            print(f"dagster dev exited with {stack.dagster.returncode}", file=sys.stderr)
            return 1
    print("stopping the demo...", flush=True)
    return 0


def local_resources(dsn: str, sim: SimulatorServer, settings=None, **exchange_config) -> dict:
    """The code location's resources bound to a local database and the simulator (the demo's
    `--once` and the tests use this; a deployment configures them from the environment)."""
    from recon_assets.resources.alerts import AlertWebhook
    from recon_assets.resources.database import PostgresStore
    from recon_assets.resources.exchange import ExchangeResource
    from recon_assets.resources.io_manager import PostgresFrameIOManager
    from recon_assets.settings import ReconSettings

    store = PostgresStore(dsn=dsn)
    return {
        "settings": settings or ReconSettings.from_env(), "database": store,
        "io_manager": PostgresFrameIOManager(database=store), "alert_webhook": AlertWebhook(),
        "exchange": ExchangeResource(credentials=json.dumps(sim.credentials()),
                                     api_base_url=sim.url, **exchange_config),
    }


def run_once(stack: DemoStack, resources: dict | None = None) -> dict:
    """One full cycle headless, through the same definitions the UI runs: snapshots and diff per
    account, the correction sensor and its jobs, then a second diff. Returns the summary.
    `resources` replaces `local_resources(stack.dsn, stack.sim)` (a test runs the same flow over
    the Supabase Data API store)."""
    import warnings

    import dagster as dg

    from recon_assets.definitions import build_defs

    resources = resources or local_resources(stack.dsn, stack.sim)
    store = resources["database"]
    defs = build_defs(resources)
    # A readable summary: Dagster's step logs stay in the run history, not on the terminal.
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    # The watchdog's failed check is reported in the summary, not as a stack trace.
    silent = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="dagster")
    summary: dict = {"cycles": [], "corrections": [], "backfills": []}
    # The demo's own instance, so these runs are in the UI's history next time.
    home = _prepare_dagster_home(stack.base, stack.sim.scenario)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        cycle_job = defs.resolve_job_def("reconciliation_cycle")
        schedule = defs.get_schedule_def("reconciliation_cycle_schedule")

        def cycle(label: str) -> None:
            with dg.build_schedule_context(
                    instance=instance, scheduled_execution_time=dt.datetime.now(dt.timezone.utc),
                    repository_def=defs.get_repository_def(),
                    resources={"settings": defs.resources["settings"]}) as context:
                tick = schedule.evaluate_tick(context)
            for request in tick.run_requests:
                # A run whose blocking integrity_watchdog check fails is a failed run with a
                # good diff: its findings stand, the profiles it tripped are paused.
                result = cycle_job.execute_in_process(instance=instance, tags=request.tags,
                                                      partition_key=request.partition_key,
                                                      run_config=silent, raise_on_error=False)
                diff = result.output_for_node("reconciliation_diff")
                candidates = result.output_for_node("exit_backfill_candidates")
                watchdog = [e for e in result.get_asset_check_evaluations()
                            if e.check_name == "integrity_watchdog"]
                summary["cycles"].append({
                    "label": label, "account": request.partition_key,
                    "by_kind": diff["kind"].value_counts().sort_index().to_dict(),
                    "backfill": candidates[["profile_id", "trade_id", "client_order_id",
                                            "fill_qty", "fill_price", "match_mode", "decision",
                                            "reason"]].to_dict("records"),
                    "watchdog_tripped": watchdog[0].metadata["tripped_profiles"].value
                    if watchdog else None})

        summary_cursor: dict = {"value": None}

        def summarize() -> None:
            """The summary sensor's tick, as the daemon would run it, recorded in the instance."""
            sensor = defs.get_sensor_def("reconciliation_summary_sensor")
            with dg.build_sensor_context(instance=instance, cursor=summary_cursor["value"],
                                         definitions=defs,
                                         resources={"database": store}) as ctx:
                result = sensor.evaluate_tick(ctx)
            for event in result.asset_events:
                instance.report_runless_asset_event(event)
            summary_cursor["value"] = result.cursor or summary_cursor["value"]

        cycle("before corrections")
        summarize()

        def launch(sensor_name: str, job_name: str, op_name: str) -> list[dict]:
            """Evaluate a sensor like the daemon does and run the jobs it requests."""
            sensor = defs.get_sensor_def(sensor_name)
            with dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(),
                                         definitions=defs, resources={"database": store}) as ctx:
                requests = sensor.evaluate_tick(ctx).run_requests
            job = defs.resolve_job_def(job_name)
            done = []
            for request in requests:
                result = job.execute_in_process(run_config={**request.run_config, **quiet},
                                                instance=instance, tags=request.tags,
                                                partition_key=request.partition_key,
                                                raise_on_error=False)
                outcomes = result.output_for_node(op_name)["outcomes"] if result.success else []
                done += [{"profile": request.tags["recon/profile"], **o} for o in outcomes]
            return done

        summary["corrections"] = launch("lifecycle_correction_sensor", "lifecycle_correction",
                                        "correct_profile")
        summary["backfills"] = launch("exit_backfill_sensor", "exit_backfill",
                                      "apply_exit_backfill")
        cycle("after corrections")
        summarize()
    summary["health"] = load_state(store).health
    return summary


def print_summary(summary: dict) -> None:
    print("\nReconciliation demo, one full cycle (simulator scenario: demo)\n")
    for c in summary["cycles"]:
        kinds = ", ".join(f"{k} {v}" for k, v in c["by_kind"].items()) or "no mismatches"
        tripped = c.get("watchdog_tripped")
        watchdog = ("" if tripped is None else "; watchdog tripped for " + ", ".join(tripped)
                    if tripped else "; watchdog: within thresholds")
        print(f"  {c['label']:<19} {c['account']}: {kinds}{watchdog}")
    print("\n  corrections (runbook handler: outcome)")
    for o in summary["corrections"]:
        print(f"    {o['profile']:<6} {o['client_order_id']:<24} {o['handler']:<18} {o['status']:<12} {o['reason']}")
    print("\n  EXIT backfill, first cycle (exit fill -> slice: decision by method)")
    first = [c for c in summary["cycles"] if c["label"] == summary["cycles"][0]["label"]]
    for c in first:
        for b in c["backfill"]:
            slice_ = f"{b['profile_id']}/{b['trade_id']}" if b["profile_id"] else "no slice"
            print(f"    {c['account']} {str(b['client_order_id']):<24} {b['fill_qty']:g} @ "
                  f"{b['fill_price']:g} -> {slice_:<12} {b['decision']:<6} "
                  f"{b['match_mode'] or '-'}")
    for o in summary["backfills"]:
        print(f"    booked: {o['profile']:<6} {o['trade_id']:<8} fill {o['exchange_fill_id']} "
              f"{o['status']}")
    print("\n  trading gate (profiles.trading_state; the trading app trades only while active)")
    for p in summary["health"].get("profiles", []):
        since = f" since {p['pausedAt']}" if p["pausedAt"] else ""
        held = (f", auto-resume held back by {', '.join(p['autoResumeHeldBackBy'])}"
                if p["autoResumeHeldBackBy"] else "")
        source = f" by {p['pauseSource']}" if p["pauseSource"] else ""
        print(f"    {p['profileId']:<6} {p['tradingState']}{source}{since}{held}")
    print("\n  /internal/health (the runbook's fields)")
    for key, value in summary["health"].items():
        if key.startswith("reconciliation"):
            print(f"    {key}: {value}")
    print("\nWhat stays open (ghost slices, foreign orders, drift) is for the parity heartbeat, "
          "EXIT backfill or an operator; a profile the integrity watchdog paused resumes by "
          "itself after clean cycles: see docs/operator-guide.md.\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recon demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(REPO / ".demo"),
                        help="folder for the demo's state (default .demo/ in the repository; "
                             "reused by the next run)")
    parser.add_argument("--once", action="store_true", help="one full cycle headless, then a summary")
    parser.add_argument("--ui-port", type=int, default=3000,
                        help="port of the Dagster UI (default 3000)")
    parser.add_argument("--health-port", type=int, default=9187,
                        help="port of /internal/health and /metrics (default 9187; 0 picks a "
                             "free one, as does a port that is taken)")
    parser.add_argument("--drift-every-s", type=float, default=45.0,
                        help="how often the stand-in trading app creates new drift "
                             "(seconds, default 45)")
    args = parser.parse_args(argv)
    health_port = 0 if args.once else args.health_port
    if not args.once and health_port:
        try:
            import socket
            with socket.create_connection(("127.0.0.1", health_port), timeout=0.2):
                health_port = free_port()  # taken: pick another, the banner prints it
        except OSError:
            pass
    if args.once:
        stack = start_stack(Path(args.dir), health_port=health_port)
        try:
            print_summary(run_once(stack))
            return 0
        finally:
            stack.stop()
    # Ctrl-C / SIGTERM, from start-up on, end in the same orderly stop of every process.
    with stop_on_signals() as stop:
        stack = start_stack(Path(args.dir), health_port=health_port)
        try:
            return run_ui(stack, args.ui_port, args.drift_every_s, stop)
        finally:
            stack.stop()
