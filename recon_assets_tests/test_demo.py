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


def test_demo_serves_the_ui_and_ctrl_c_stops_everything(demo_dir):
    import signal
    import urllib.request

    from recon_assets.local_postgres import free_port

    ui_port = free_port()
    log = open(demo_dir / "demo.log", "w+")
    demo = subprocess.Popen(
        [RECON, "demo", "--dir", str(demo_dir), "--ui-port", str(ui_port), "--health-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while True:
            assert demo.poll() is None, "the demo exited early:\n" + (demo_dir / "demo.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/server_info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Dagster UI never answered"
            time.sleep(1)
        banner = (demo_dir / "demo.log").read_text()
        assert f"Dagster UI        http://127.0.0.1:{ui_port}" in banner
        assert "/internal/health" in banner
        assert _processes_of(demo_dir), "found none of the demo's processes while it runs"
        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert demo.wait(90) == 0
        deadline = time.monotonic() + 30
        while _processes_of(demo_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_of(demo_dir) == [], "processes left after Ctrl-C"
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        for pid in _processes_of(demo_dir):  # never leave anything behind, even on failure
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
