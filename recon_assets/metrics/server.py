"""`recon health`: serves the runbook's `/internal/health` (JSON) and `/metrics` (Prometheus).

    recon health [--host 127.0.0.1] [--port 9187] [--stale-after-s 300]
                 [--dsn URL | $RECON_DATABASE_URL
                  | $RECON_SUPABASE_URL + $RECON_SUPABASE_SERVICE_ROLE_KEY]

Both endpoints read the persisted state in the `recon` schema on every request (see
`recon_assets.metrics.health` for what each number means), so they survive restarts and any
number of replicas agree. Bound to 127.0.0.1 unless `--host` says otherwise; `--port 0` picks a
free port. The first line printed on stdout names the address actually served.

- `GET /internal/health`: 200 with the runbook fields when the state could be read (whether the
  loop is healthy or not is in the body), 503 with `reconciliationLoopHealthy: false` and an
  `error` when the database cannot be read.
- `GET /metrics`: Prometheus text format through `prometheus_client`, one custom collector that
  reads the database on each scrape. Counters `reconciliation_mismatch_total`,
  `reconciliation_missing_from_exchange_total`, `reconciliation_missing_in_db_total`; gauges for
  the runtime fields. When the database cannot be read, the scrape still answers 200 with
  `reconciliation_loop_healthy 0` and `reconciliation_state_up 0` (so alerts fire on the loop,
  not on a missing target), and no counters.

Read-only: GET and HEAD are answered; POST, PUT, DELETE, PATCH, OPTIONS, TRACE and CONNECT get
405 with `Allow: GET, HEAD` and touch nothing (the database is only read, through
`recon_health_state`, so the reconciler's role of docs/deployment.md can serve it).

SIGTERM and SIGINT stop the server (their handlers are installed explicitly, since shells here
start background processes with those signals ignored).
"""

import argparse
import json
import os
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from recon_assets.core.rules import TRADING_STATES
from recon_assets.metrics.health import (
    DEFAULT_STALE_AFTER_S,
    HealthUnavailable,
    ReconState,
    load_state,
    unavailable_health,
)
from recon_assets.processes import stop_on_signals
from recon_assets.resources.database import redact_dsn
from recon_assets.resources.supabase_store import SupabaseStore

DEFAULT_PORT = 9187
DEFAULT_HOST = "127.0.0.1"
# The server is read-only: these are answered, every other method of HTTP gets 405.
ALLOWED_METHODS = ("GET", "HEAD")

# /metrics gauges: (metric name, /internal/health field, help). The current counts of missing
# orders are `*_count` gauges so their names never collide with the `*_total` counters.
GAUGES = (
    ("reconciliation_loop_healthy", "reconciliationLoopHealthy",
     "1 when every watched account had a succeeded cycle within the staleness bound and its last "
     "finished cycle did not fail, else 0."),
    ("reconciliation_mismatch_count", "reconciliationMismatchCount",
     "Mismatches found by the latest succeeded cycle of each account, all kinds."),
    ("reconciliation_missing_from_exchange_count", "reconciliationMissingFromExchange",
     "Orders open in the database but absent on the exchange, in the latest succeeded cycles."),
    ("reconciliation_missing_in_db_count", "reconciliationMissingInDb",
     "Exchange orders absent in the database, in the latest succeeded cycles."),
    ("reconciliation_parity_mismatch_trades", "reconciliationParityMismatchTrades",
     "Distinct trades with a ghost slice in the latest succeeded cycles."),
    ("reconciliation_parity_quarantined_trades", "reconciliationParityQuarantinedTrades",
     "Trade slices in quarantine now (not released)."),
    ("reconciliation_parity_auto_closed_trades", "reconciliationParityAutoClosedTrades",
     "Synthetic EXITs applied (not dry run), all time."),
    ("reconciliation_parity_max_mismatch_notional_usd", "reconciliationParityMaxMismatchNotionalUsd",
     "Largest ghost-slice notional (USD) in the latest succeeded cycles."),
    ("reconciliation_parity_total_mismatch_notional_usd",
     "reconciliationParityTotalMismatchNotionalUsd",
     "Sum of ghost-slice notional (USD) in the latest succeeded cycles."),
    ("reconciliation_integrity_watchdog_triggered", "reconciliationIntegrityWatchdogTriggered",
     "1 while the integrity watchdog has at least one profile paused, else 0."),
    ("reconciliation_uncharged_drift_usd", "reconciliationUnchargedDriftUsd",
     "Position drift (USD) the watchdog could charge to no profile, latest succeeded cycles."),
)

# /metrics counters: (family name, prometheus_client appends _total; key in ReconState.cumulative).
COUNTERS = (
    ("reconciliation_mismatch", "mismatch",
     "Mismatch findings recorded in recon.mismatches, all kinds, since the history began."),
    ("reconciliation_missing_from_exchange", "missing_from_exchange",
     "Findings of kind missing_from_exchange recorded since the history began."),
    ("reconciliation_missing_in_db", "missing_in_db",
     "Findings of kind missing_in_db recorded since the history began."),
)


class ReconStateCollector:
    """A prometheus_client collector that reads the persisted state on each scrape."""

    def __init__(self, source, stale_after_s: float = DEFAULT_STALE_AFTER_S):
        self.source = source  # a Postgres DSN or a TradingStore (load_state takes either)
        self.stale_after_s = stale_after_s

    def collect(self) -> Iterator[Metric]:
        try:
            state: ReconState | None = load_state(self.source, self.stale_after_s)
        except HealthUnavailable:
            state = None
        yield GaugeMetricFamily("reconciliation_state_up",
                                "1 when the reconciliation state could be read from the database.",
                                value=1 if state else 0)
        if state is None:
            yield GaugeMetricFamily("reconciliation_loop_healthy", GAUGES[0][2], value=0)
            return
        for name, key, help_text in COUNTERS:
            yield CounterMetricFamily(name, help_text, value=state.cumulative[key])
        for name, field, help_text in GAUGES:
            yield GaugeMetricFamily(name, help_text, value=float(state.health[field]))
        last_run = state.health["reconciliationLastRun"]
        if last_run is not None:
            yield GaugeMetricFamily(
                "reconciliation_last_run_timestamp_seconds",
                "Unix time the most recent finished cycle ended (absent when there is none).",
                value=datetime.fromisoformat(last_run).timestamp())
        yield from profile_gauges(state.health["profiles"])
        yield from breakdown_metrics(state)
        accounts = GaugeMetricFamily(
            "reconciliation_account_loop_healthy",
            "1 when this exchange account's reconciliation loop is healthy, else 0.",
            labels=["account"])
        for account in state.health["accounts"]:
            accounts.add_metric([account["account"]], 1 if account["healthy"] else 0)
        yield accounts


def profile_gauges(profiles: list[dict]) -> Iterator[Metric]:
    """Each profile's trading gate: its state (one series per state, 1 for the current one),
    whether the watchdog paused it, since when it is paused, when auto-resume could happen, and
    the watchdog's last notional and threshold."""
    labels = ["profile", "account"]
    state = GaugeMetricFamily(
        "reconciliation_profile_trading_state",
        "1 for the profile's current trading state (active, reconciling, paused), else 0.",
        labels=labels + ["state"])
    triggered = GaugeMetricFamily(
        "reconciliation_profile_watchdog_triggered",
        "1 while the profile is paused by the integrity watchdog, else 0.", labels=labels)
    since = GaugeMetricFamily(
        "reconciliation_profile_paused_since_timestamp_seconds",
        "Unix time the profile's pause began (only paused profiles).",
        labels=labels + ["pause_source"])
    resume = GaugeMetricFamily(
        "reconciliation_profile_auto_resume_earliest_timestamp_seconds",
        "Earliest unix time auto-resume could lift the profile's pause (only when it can).",
        labels=labels)
    notional = GaugeMetricFamily(
        "reconciliation_profile_mismatch_notional_usd",
        "The integrity watchdog's last mismatch notional for the profile (USD).", labels=labels)
    threshold = GaugeMetricFamily(
        "reconciliation_profile_watchdog_threshold_usd",
        "The integrity watchdog's last threshold for the profile (USD).", labels=labels)
    for p in profiles:
        key = [p["profileId"], p["account"]]
        for name in TRADING_STATES:
            state.add_metric(key + [name], 1 if p["tradingState"] == name else 0)
        triggered.add_metric(key, 1 if p["watchdogTriggered"] else 0)
        if p["pausedAt"]:
            since.add_metric(key + [p["pauseSource"] or ""],
                             datetime.fromisoformat(p["pausedAt"]).timestamp())
        if p["autoResumeEarliestAt"]:
            resume.add_metric(key, datetime.fromisoformat(p["autoResumeEarliestAt"]).timestamp())
        if p["mismatchNotionalUsd"] is not None:
            notional.add_metric(key, p["mismatchNotionalUsd"])
            threshold.add_metric(key, p["thresholdUsd"] or 0.0)
    yield from (state, triggered, since, resume, notional, threshold)


def breakdown_metrics(state: ReconState) -> Iterator[Metric]:
    """The runbook's series by account, profile and kind (profile "" for account-level findings
    such as foreign orders and position drift), and the alerts by reason."""
    labels = ["account", "profile", "kind"]
    mismatches = GaugeMetricFamily(
        "reconciliation_mismatches",
        "Mismatches found by the latest succeeded cycle, by account, profile and kind.",
        labels=labels)
    notional = GaugeMetricFamily(
        "reconciliation_notional_at_risk_usd",
        "Notional (USD) of the mismatches found by the latest succeeded cycle, by account, "
        "profile and kind.", labels=labels)
    for row in state.breakdown:
        key = [row["account"], row["profile_id"] or "", row["kind"]]
        mismatches.add_metric(key, int(row["findings"]))
        notional.add_metric(key, float(row["notional_usd"]))
    raised = CounterMetricFamily(
        "reconciliation_alerts", "Alerts raised, all time, by account, profile and reason.",
        labels=["account", "profile", "reason"])
    undelivered = GaugeMetricFamily(
        "reconciliation_alerts_undelivered",
        "Alerts the webhook has not taken (still retrying, or given up), by account, profile "
        "and reason.", labels=["account", "profile", "reason"])
    for row in state.alerts:
        key = [row["account"] or "", row["profile_id"] or "", row["reason"]]
        raised.add_metric(key, int(row["raised"]))
        undelivered.add_metric(key, int(row["undelivered"]))
    contention = CounterMetricFamily(
        "reconciliation_lock_contention",
        "Corrections that waited too long for a profile's lock or a row lock, all time.",
        value=state.cumulative.get("lock_contention", 0))
    yield from (mismatches, notional, raised, undelivered, contention)


def build_registry(source, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReconStateCollector(source, stale_after_s))
    return registry


class _Handler(BaseHTTPRequestHandler):
    server_version = "recon-health"
    protocol_version = "HTTP/1.1"
    # A Postgres DSN or a TradingStore, held in a tuple: a Dagster resource is a descriptor
    # and would not survive being a class attribute itself.
    sources: tuple

    @property
    def source(self):
        return self.sources[0]
    stale_after_s: float
    registry: CollectorRegistry

    def log_message(self, format, *args):  # noqa: A002 - one line per request, no query strings
        sys.stderr.write(f"recon health: {self.command} {urlsplit(self.path).path} "
                         f"-> {args[1] if len(args) > 1 else '?'}\n")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload, indent=2).encode() + b"\n", "application/json")

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == "/internal/health":
            try:
                state = load_state(self.source, self.stale_after_s)
            except HealthUnavailable as exc:
                return self._json(503, unavailable_health(str(exc), self.stale_after_s))
            except Exception as exc:  # noqa: BLE001 - never a crash, never a traceback with secrets
                return self._json(503, unavailable_health(
                    f"cannot compute health: {type(exc).__name__}", self.stale_after_s))
            return self._json(200, state.health)
        if path == "/metrics":
            # Content negotiation as prometheus_client's own handler does it: text format 0.0.4
            # unless the scraper asks for 1.0.0 or OpenMetrics.
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            try:
                body = encoder(self.registry)
            except Exception as exc:  # noqa: BLE001
                return self._send(500, f"# metrics failed: {type(exc).__name__}\n".encode(),
                                  "text/plain; charset=utf-8")
            return self._send(200, body, content_type)
        if path == "/":
            return self._json(200, {"endpoints": ["/internal/health", "/metrics"]})
        return self._json(404, {"error": f"no such endpoint: {path}"})

    do_HEAD = do_GET

    def _read_only(self):
        """Every other method: 405 with the methods that are answered; nothing is read from
        the database or changed. The request's body is not read, so the connection is closed."""
        self.close_connection = True
        body = json.dumps({"error": f"{self.command} is not allowed; this server is read-only",
                           "allow": list(ALLOWED_METHODS)}).encode() + b"\n"
        self.send_response(405)
        self.send_header("Allow", ", ".join(ALLOWED_METHODS))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _read_only


def _database_from(dsn: str | None, environ) -> tuple:
    """(source, where, problem): the database to read, from --dsn, RECON_DATABASE_URL, or
    RECON_SUPABASE_URL + RECON_SUPABASE_SERVICE_ROLE_KEY (the Data API); `where` names it without
    a secret, `problem` says what is missing or contradictory (never a value)."""
    dsn = dsn or environ.get("RECON_DATABASE_URL")
    url, key = environ.get("RECON_SUPABASE_URL"), environ.get("RECON_SUPABASE_SERVICE_ROLE_KEY")
    if dsn and (url or key):
        return None, None, ("give a Postgres URL (--dsn or RECON_DATABASE_URL) or "
                            "RECON_SUPABASE_URL and RECON_SUPABASE_SERVICE_ROLE_KEY, not both")
    if dsn:
        return dsn, redact_dsn(dsn), None
    if url and key:
        store = SupabaseStore(url=url, service_key=key, timeout_s=10.0)
        return store, store.describe(), None
    if url or key:
        missing = "RECON_SUPABASE_SERVICE_ROLE_KEY" if url else "RECON_SUPABASE_URL"
        return None, None, f"{missing} is not set (the Data API path needs both)"
    return None, None, ("give --dsn, or set RECON_DATABASE_URL, or RECON_SUPABASE_URL and "
                        "RECON_SUPABASE_SERVICE_ROLE_KEY")


def make_server(source, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                stale_after_s: float = DEFAULT_STALE_AFTER_S) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server reading through `source` (a Postgres DSN or a
    TradingStore, either backend); call `serve_forever()`, later `shutdown()`."""
    handler = type("ReconHealthHandler", (_Handler,), {
        "sources": (source,), "stale_after_s": stale_after_s,
        "registry": build_registry(source, stale_after_s)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recon health", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--dsn", help="Postgres URL (default: $RECON_DATABASE_URL)")
    parser.add_argument("--stale-after-s", type=float, default=DEFAULT_STALE_AFTER_S,
                        help="the loop is unhealthy when the last succeeded cycle is older "
                             f"(seconds, default {DEFAULT_STALE_AFTER_S:g})")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    source, where, problem = _database_from(args.dsn, os.environ)
    if problem:
        print(f"recon health: {problem}", file=sys.stderr)
        return 2
    if args.stale_after_s <= 0:
        print(f"recon health: --stale-after-s must be > 0, got {args.stale_after_s:g}",
              file=sys.stderr)
        return 2
    try:
        server = make_server(source, args.host, args.port, args.stale_after_s)
    except OSError as exc:
        print(f"recon health: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    host, port = server.server_address[:2]

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="recon-health", daemon=True)
    with stop_on_signals() as stop:
        thread.start()
        print(f"recon health: serving http://{host}:{port}/internal/health and /metrics from "
              f"{where} (stale after {args.stale_after_s:g}s)", flush=True)
        try:
            while not stop.wait(0.5):  # a short wait, so the signal handler gets to run
                pass
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
    print("recon health: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
