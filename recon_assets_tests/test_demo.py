"""The README's demo, headless (`recon demo --once`), run as a user would, twice."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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
