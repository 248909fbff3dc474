"""A throwaway PostgreSQL server in a folder, for the test harness and the demo.

It uses the machine's PostgreSQL binaries (Debian's `postgresql` package). `initdb` refuses to
run as root, so as root the server runs as the `postgres` user. The server is started as a
direct child process (not through `pg_ctl`) so it can be stopped by its pid; signal dispositions
are reset in the child because shells here start background processes with SIGINT/SIGTERM
ignored, which would make a polite shutdown impossible.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg

from recon_assets.processes import reset_signals


class LocalPostgresError(RuntimeError):
    """The local PostgreSQL server could not be set up or started."""


def find_pg_bindir() -> Path:
    """The folder holding initdb and postgres: `pg_config --bindir`, else Debian's layout."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise LocalPostgresError(
        "PostgreSQL server binaries not found (no initdb). Install them with "
        "`apt-get install -y postgresql` (the Makefile does this for you)."
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalPostgres:
    """One PostgreSQL server whose data lives in `data_dir`, listening on 127.0.0.1:`port`."""

    def __init__(self, data_dir: Path | str, port: int | None = None, user: str = "postgres"):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.user = user
        self.process: subprocess.Popen | None = None
        self._bindir = find_pg_bindir()
        # As root the server must run as an unprivileged user; otherwise as ourselves.
        self._run_as = "postgres" if os.geteuid() == 0 else None

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _chown(self, path: Path) -> None:
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def init(self) -> None:
        """Create the cluster unless `data_dir` already holds one (a second demo run reuses it)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.data_dir)
        cmd = [str(self._bindir / "initdb"), "-D", str(self.data_dir), "--auth=trust",
               f"--username={self.user}", "--encoding=UTF8", "--no-sync"]
        result = subprocess.run(cmd, capture_output=True, text=True, user=self._run_as)
        if result.returncode != 0:
            raise LocalPostgresError(f"initdb failed: {result.stderr.strip()[-2000:]}")

    def start(self, timeout: float = 30.0) -> None:
        self.init()
        stale_pid = self.data_dir / "postmaster.pid"
        if stale_pid.exists():
            self._clear_stale_pidfile(stale_pid)
        log = open(self.log_path, "ab")
        self._chown(self.log_path)
        cmd = [str(self._bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
               "-k", str(self.data_dir), "-c", "listen_addresses=127.0.0.1",
               "-c", "max_connections=200", "-c", "fsync=off",
               "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
               # Who did what in which database: a refused call is recorded in this log with
               # its role, database, error and statement (as Supabase's Postgres logs do).
               "-c", "log_line_prefix=%m [%p] %u@%d "]
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            user=self._run_as, preexec_fn=reset_signals, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LocalPostgresError(
                    f"postgres exited with {self.process.returncode}; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:])
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise LocalPostgresError(f"postgres did not accept connections within {timeout}s")

    def _clear_stale_pidfile(self, pidfile: Path) -> None:
        """A previous run killed hard leaves postmaster.pid; remove it if that pid is gone."""
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            pidfile.unlink(missing_ok=True)
            return
        except PermissionError:
            pass
        raise LocalPostgresError(
            f"a postgres (pid {pid}) is already running on {self.data_dir}; stop it first")

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown by pid (SIGINT), then SIGKILL if it does not exit in time."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def create_database(self, name: str, template: str | None = None) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
            conn.execute(sql)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> "LocalPostgres":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def dagster_pg_env(url: str) -> dict[str, str]:
    """The DAGSTER_PG_* variables deploy/dagster.yaml reads, for a database URL of a LocalPostgres
    (trust authentication: the password is not checked), for the tests and benchmarks that run
    the deployment's instance."""
    user_host, _, db = url.removeprefix("postgresql://").rpartition("/")
    user, _, host_port = user_host.partition("@")
    host, _, port = host_port.partition(":")
    return {f"DAGSTER_PG_{name}": value for name, value in (
        ("USERNAME", user), ("PASSWORD", "unused-trust-auth"), ("HOST", host), ("DB", db),
        ("PORT", port))}
