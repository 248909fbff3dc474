"""The deployed shape on this machine: the code location as a gRPC code server, dagster-webserver
and dagster-daemon as separate processes on loopback, with deploy/dagster.yaml (Postgres storage,
the queued run coordinator, run monitoring and retries) against a real PostgreSQL, and a second
one for the trading database. The schedule and the sensors run as shipped (RUNNING by default);
a drift injected into the simulator (a resting ENTRY canceled by the exchange behind the
database's back) is found by a daemon-launched cycle and corrected by a daemon-launched
correction run. The test reads the outcome from the trading database and the run
history from the webserver's GraphQL API, then stops every process by pid."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dagster as dg
import psycopg
import pytest

from recon_assets.core.attribution import make_client_order_id
from recon_assets.defs.partitions import exchange_account_partitions, profile_partitions
from recon_assets.local_postgres import dagster_pg_env, free_port
from recon_assets.processes import reset_signals, stop_process_group
from recon_assets_tests.harness.exchange import running_simulator

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
# The schedule ticks on the minute; a cycle's run is a process of its own (imports ~5 s of CPU),
# and the correction sensor looks every 15 s: a correction within about two minutes of start,
# more on a loaded machine (this test shares its two cores with the rest of the suite).
OUTCOME_TIMEOUT_S = 420

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId jobName status tags { key value } } }
    ... on PythonError { message }
  }
}"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", method="POST",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def runs(port: int, job_name: str) -> list[dict]:
    data = graphql(port, RUNS_QUERY, {"filter": {"pipelineName": job_name}})["runsOrError"]
    assert data["__typename"] == "Runs", data
    return [{**run, "tags": {t["key"]: t["value"] for t in run["tags"]}} for run in data["results"]]


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def query(dsn: str, sql: str, params=()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


class Processes:
    """The processes this test starts, each in a session of its own (its children with it)."""

    def __init__(self, logs: pathlib.Path, env: dict[str, str]):
        self.logs, self.env, self.started = logs, env, {}

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=reset_signals,
                                start_new_session=True, cwd=self.logs)
        log.close()
        self.started[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.started.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{self.tail(name)}"

    def tail(self, name: str, lines: int = 40) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> dict[str, int]:
        for proc in reversed(list(self.started.values())):
            stop_process_group(proc)
        return {name: proc.pid for name, proc in self.started.items()}


def wait_for(what: str, condition, processes: Processes, timeout_s: float, every_s: float = 2.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        processes.check_alive()
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    logs = "\n".join(f"--- {name}\n{processes.tail(name)}" for name in processes.started)
    raise AssertionError(f"{what}: not within {timeout_s} s\n{logs}")


def test_daemon_launched_runs_find_and_correct_a_drift_in_the_deployed_shape(
        pg_server, pg_dsn, tmp_path, monkeypatch):
    storage_db = f"dagster_daemon_{os.getpid()}"
    pg_server.drop_database(storage_db)
    storage_url = pg_server.create_database(storage_db)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    workspace = tmp_path / "workspace.yaml"
    grpc_port, web_port = free_port(), free_port()
    workspace.write_text(
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {grpc_port}\n      location_name: recon_assets\n")
    pg_env = dagster_pg_env(storage_url)
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)

    with running_simulator("clean") as sim:
        scenario = sim.scenario
        scenario.seed_database(pg_dsn)
        # A resting ENTRY of beta's, placed ten minutes ago as the trading app would (on the
        # exchange and in the orders table): what the drift below acts on. Small (14 USD, under
        # the watchdog's 0.5 % of beta's capital): a larger drift pauses the profile and fails
        # the cycle's blocking check, which is the watchdog's story, not this test's.
        cid = make_client_order_id("BET", "t-b9", "ENTRY")
        order = sim.exchange.place_order("acct1", "DOGEUSDT", "BUY", "LIMIT", "100", "0.14",
                                         client_order_id=cid)
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(
                "INSERT INTO orders (profile_id, trade_id, intent, symbol, side, client_order_id, "
                "exchange_order_id, status, qty, price, created_at, updated_at) VALUES ('beta', "
                "'t-b9', 'ENTRY', 'DOGE/USDT:USDT', 'buy', %s, %s, 'open', 100, 0.14, "
                "now() - interval '10 minutes', now() - interval '10 minutes')",
                (cid, str(order.order_id)))
        # The partitions the partitions sensor would add on its first tick, added now so the
        # first scheduled cycle does not wait a minute for it.
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.add_dynamic_partitions(exchange_account_partitions.name, scenario.accounts())
            instance.add_dynamic_partitions(profile_partitions.name,
                                            sorted(p["id"] for p in scenario.db["profiles"]))
        env = {**os.environ, **pg_env, "DAGSTER_HOME": str(home),
               "RECON_DATABASE_URL": pg_dsn,
               "RECON_EXCHANGE_CREDENTIALS": json.dumps(sim.credentials()),
               "RECON_EXCHANGE_API_BASE_URL": sim.url}
        processes = Processes(tmp_path, env)
        try:
            processes.start("code-server", "dagster", "code-server", "start", "-h", "127.0.0.1",
                            "-p", str(grpc_port), "-m", "recon_assets.definitions", "-a", "defs",
                            "--location-name", "recon_assets")
            processes.start("webserver", "dagster-webserver", "-h", "127.0.0.1", "-p",
                            str(web_port), "-w", str(workspace))
            processes.start("daemon", "dagster-daemon", "run", "-w", str(workspace))
            wait_for("the webserver answers", lambda: answers(web_port), processes, 180)

            # The drift: the exchange cancels beta's resting ENTRY behind the database's back.
            sim.exchange.cancel_order("acct1", client_order_id=cid)

            def corrected():
                rows = query(pg_dsn, "SELECT o.status, c.handler FROM orders o JOIN "
                             "recon.corrections c ON c.client_order_id = o.client_order_id "
                             "WHERE o.client_order_id = %s AND NOT c.dry_run", (cid,))
                return rows if rows and rows[0][0] == "canceled" else None

            rows = wait_for("the cancel corrected in the trading database", corrected,
                            processes, OUTCOME_TIMEOUT_S)
            assert rows == [("canceled", "reconcile_cancel")]
            assert query(pg_dsn, "SELECT recon_may_trade('beta')") == [(True,)]  # not paused

            # The run history, through the webserver: the cycles the schedule launched and the
            # correction the sensor launched, each as its own run, finished.
            def finished(job, tag, value):
                done = [r for r in runs(web_port, job) if r["tags"].get(tag) == value
                        and r["status"] == "SUCCESS"]
                return done or None

            corrections = wait_for("a successful correction run of beta", lambda: finished(
                "lifecycle_correction", "dagster/sensor_name", "lifecycle_correction_sensor"),
                processes, 60)
            assert {r["tags"]["dagster/partition"] for r in corrections} == {"beta"}
            (cycle_id,) = {r["tags"]["recon/cycle"] for r in corrections}
            # The cycle that found the drift (its later steps may still be running when the
            # correction is applied: the sensor acts on the diff's materialization).
            cycles = wait_for(f"the cycle {cycle_id} finished", lambda: [
                r for r in finished("reconciliation_cycle", "dagster/schedule_name",
                                    "reconciliation_cycle_schedule") or []
                if r["runId"] == cycle_id], processes, 120)
            assert [r["tags"]["dagster/partition"] for r in cycles] == ["acct1"]
            # The booked correction names the correction run and, as evidence, the diff's cycle.
            assert query(pg_dsn, "SELECT cycle_id, evidence->'input'->>'diff_cycle_id' FROM "
                         "recon.corrections WHERE client_order_id = %s", (cid,)) == [
                (corrections[0]["runId"], cycle_id)]
            # Each run was launched by the daemon through the queue, with the limits' tags.
            assert all(r["tags"]["recon/account"] == "acct1" for r in cycles)
            assert all(r["tags"]["recon/profile"] == "beta" for r in corrections)
        finally:
            pids = processes.stop_all()
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the process and everything in its group are gone
    pg_server.drop_database(storage_db)
