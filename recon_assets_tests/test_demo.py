"""The README's demo, headless (`recon demo --once`), run as a user would, twice."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RECON = str(Path(sys.executable).parent / "recon")


@pytest.fixture
def demo_dir():
    base = tempfile.mkdtemp(prefix="recon-demo-")
    os.chmod(base, 0o755)  # the demo's Postgres runs as the postgres user
    yield Path(base)
    shutil.rmtree(base, ignore_errors=True)


def _run_demo_once(demo_dir: Path) -> str:
    result = subprocess.run([RECON, "demo", "--once", "--dir", str(demo_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _postgres_running_in(demo_dir: Path) -> bool:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any("postgres" in line and str(demo_dir) in line for line in ps.splitlines())


def test_demo_once_corrects_what_it_covers_and_reuses_its_setup(demo_dir):
    out = _run_demo_once(demo_dir)
    before = next(l for l in out.splitlines() if "before corrections" in l and "acct1" in l)
    after = next(l for l in out.splitlines() if "after corrections" in l and "acct1" in l)
    assert "missing_from_exchange 4" in before
    assert "missing_from_exchange" not in after, "the corrections left orders missing"
    for handler in ("reconcileEntryFill", "reconcileExitFill", "reconcileCancel"):
        assert f"{handler} applied" in " ".join(out.split()), handler
    assert "reconciliationLoopHealthy: True" in out
    assert "reconciliationMissingFromExchange: 0" in out
    # What the handlers do not cover stays visible as open mismatches.
    assert "ghost_slice" in after and "missing_in_db 2" in after
    assert not _postgres_running_in(demo_dir), "the demo left its PostgreSQL running"

    # The second run reuses the cluster and the Dagster home, and works the same way.
    cluster_id = (demo_dir / "pg" / "global" / "pg_control").stat().st_ino
    again = _run_demo_once(demo_dir)
    assert (demo_dir / "pg" / "global" / "pg_control").stat().st_ino == cluster_id
    assert "reconciliationMissingFromExchange: 0" in again
    assert len(list((demo_dir / "dagster_home").iterdir())) > 1, "no Dagster history kept"
    assert not _postgres_running_in(demo_dir)


def _processes_of(demo_dir: Path) -> list[int]:
    """Pids whose command line or environment names the demo folder (postgres, dagster dev and
    its webserver, daemon and code server all carry it one way or the other)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(demo_dir).encode() in blob:
            found.append(int(proc.name))
    return found


def _start_demo(demo_dir: Path, ui_port: int, log):
    """`recon demo` in its own session, and the log once it says it is up (the UI answers)."""
    import signal

    demo = subprocess.Popen(
        [RECON, "demo", "--dir", str(demo_dir), "--ui-port", str(ui_port), "--health-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while "recon demo is up" not in (demo_dir / "demo.log").read_text():
        assert demo.poll() is None, "the demo exited early:\n" + (demo_dir / "demo.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the demo never said it is up"
        time.sleep(1)
    return demo


def _stop_demo(demo, demo_dir: Path) -> None:
    import signal

    demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert demo.wait(90) == 0
    deadline = time.monotonic() + 30
    while _processes_of(demo_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_of(demo_dir) == [], "processes left after Ctrl-C"


def _kill_everything(demo, demo_dir: Path) -> None:
    import signal

    if demo is not None and demo.poll() is None:
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait(10)
    for pid in _processes_of(demo_dir):  # never leave anything behind, even on failure
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_demo_serves_the_ui_and_ctrl_c_stops_everything(demo_dir):
    import urllib.request

    from recon_assets.local_postgres import free_port

    ui_port = free_port()
    log = open(demo_dir / "demo.log", "w+")
    demo = None
    try:
        demo = _start_demo(demo_dir, ui_port, log)
        # It says it is up only once the UI answers.
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/server_info", timeout=5) as r:
            assert r.status == 200
        banner = (demo_dir / "demo.log").read_text()
        assert f"Dagster UI        http://127.0.0.1:{ui_port}" in banner
        assert "/internal/health" in banner
        assert _processes_of(demo_dir), "found none of the demo's processes while it runs"
        _stop_demo(demo, demo_dir)
    finally:
        _kill_everything(demo, demo_dir)
        log.close()


def _ticked_after(instance, sensor: str, after: float) -> bool:
    """Whether `sensor` finished an evaluation that started after `after` (epoch seconds)."""
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == sensor:
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5)
            return any(t.timestamp > after and t.status in (TickStatus.SUCCESS,
                                                            TickStatus.SKIPPED)
                       for t in ticks)
    return False


def test_a_demo_stopped_mid_cycle_and_started_again_raises_no_failed_cycle(demo_dir):
    """Ctrl-C while a cycle runs, then `recon demo` again: the interrupted run is no failed
    cycle, runs left from before do not act on the re-seeded database, and the cycles after the
    restart succeed."""
    import re

    import dagster as dg
    import psycopg

    from recon_assets.local_postgres import free_port

    log = open(demo_dir / "demo.log", "w+")
    demo = None
    try:
        demo = _start_demo(demo_dir, free_port(), log)
        deadline = time.monotonic() + 150
        with dg.DagsterInstance.from_config(str(demo_dir / "dagster_home")) as instance:
            while not (running := instance.get_runs(dg.RunsFilter(
                    job_name="reconciliation_cycle", statuses=[dg.DagsterRunStatus.STARTED]))):
                assert time.monotonic() < deadline, "no cycle started"
                time.sleep(0.5)
        interrupted = running[0].run_id
        _stop_demo(demo, demo_dir)  # mid-cycle
        log.truncate(0)
        log.seek(0)
        demo = _start_demo(demo_dir, free_port(), log)
        restarted = time.time()
        dsn = re.search(r"database\s+(postgresql://\S+)", (demo_dir / "demo.log").read_text())[1]
        deadline = time.monotonic() + 180
        while True:
            with psycopg.connect(dsn) as conn:
                done = conn.execute(
                    "SELECT count(*) FROM recon.cycles WHERE status = 'succeeded' "
                    "AND started_at > to_timestamp(%s)", (restarted,)).fetchone()[0]
            if done:
                break
            assert time.monotonic() < deadline, "no cycle succeeded after the restart"
            time.sleep(2)
        succeeded = time.time()
        with dg.DagsterInstance.from_config(str(demo_dir / "dagster_home")) as instance:
            # The run the stop interrupted ended (failed by the interrupt, or canceled as
            # superseded by the restart), not left running; below: it is no failed cycle.
            run = instance.get_run_by_id(interrupted)
            assert run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED), (
                interrupted, run.status)
            # Wait for the sensors that would record and escalate a failed cycle to have looked
            # after that cycle (instead of sleeping through their interval).
            for sensor in ("failed_cycle_sensor", "escalation_sensor"):
                while not _ticked_after(instance, sensor, succeeded):
                    assert time.monotonic() < deadline + 90, f"{sensor} did not tick"
                    time.sleep(1)
        with psycopg.connect(dsn) as conn:
            failed = conn.execute("SELECT cycle_id, error FROM recon.cycles "
                                  "WHERE status = 'failed'").fetchall()
            (interrupted_status,) = conn.execute(
                "SELECT coalesce(max(status), 'not recorded') FROM recon.cycles "
                "WHERE cycle_id = %s", (interrupted,)).fetchone()
            alerts = conn.execute("SELECT summary FROM recon.alerts "
                                  "WHERE reason = 'failed_cycle'").fetchall()
        assert failed == [] and alerts == [], (failed, alerts)
        assert interrupted_status != "failed", interrupted_status
        _stop_demo(demo, demo_dir)
    finally:
        _kill_everything(demo, demo_dir)
        log.close()
