"""The per-IP request-weight budget, shared through Postgres by every run and process that
reads through one egress (`recon.exchange_weight_budget`, charged and noted by the SQL functions
`recon_take_exchange_weight` / `recon_note_exchange_weight`). The exchange client charges each
request its documented weight (core.request_weights) before sending it, and notes what the
exchange answers: its used-weight header, a Retry-After (429), a ban (418).

Over the same connection, what every run reads from the exchange alike (migration 0015): the
exchange's clock as measured from this host (`recon.exchange_clock`) and the markets
(`recon.exchange_markets`); one read serves every run while it is fresh."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import psycopg
from psycopg.types.json import Jsonb

from recon_assets.resources.database import open_connection


class WeightBudgetSpent(RuntimeError):
    """No request may be sent through this egress before `until` (budget, Retry-After or ban)."""

    def __init__(self, egress: str, reason: str, until: dt.datetime, used: int):
        self.egress, self.reason, self.until, self.used = egress, reason, until, used
        what = {"banned": "the exchange banned this IP (418)",
                "retry_after": "the exchange asked us to back off (429 Retry-After)",
                "budget": "the request-weight budget of this minute is spent"}[reason]
        super().__init__(f"{what} for egress {egress!r} until {until.isoformat()} "
                         f"(weight used this minute: {used}); no request is sent before then")

    def wait_s(self, now: float | None = None) -> float:
        return max(0.0, self.until.timestamp() - (time.time() if now is None else now))


class PostgresWeightBudget:
    """One egress's budget in Postgres (`database`: a PostgresStore), over one connection
    held for the session (`close` ends it)."""

    def __init__(self, database, egress: str, limit: int):
        self.database, self.egress, self.limit = database, egress, limit
        self._conn = None

    def _call(self, sql: str, params: tuple):
        for attempt in (1, 2):
            if self._conn is None or self._conn.closed:
                self._conn = open_connection(  # errors never echo the DSN
                    self.database.dsn, autocommit=True,
                    connect_timeout=self.database.connect_timeout_s,
                    application_name="recon-assets-weight-budget")
            try:
                return self._conn.execute(sql, params).fetchone()
            except psycopg.OperationalError:
                self.close()  # a dropped connection: once more on a new one
                if attempt == 2:
                    raise

    def take(self, weight: int) -> int:
        """Charge `weight`; the weight used this minute, or WeightBudgetSpent."""
        (answer,) = self._call("SELECT public.recon_take_exchange_weight(%s, %s::integer, %s::integer)",
                               (self.egress, weight, self.limit))
        if answer["granted"]:
            return int(answer["used"])
        raise WeightBudgetSpent(self.egress, answer["reason"],
                                dt.datetime.fromisoformat(answer["until"]), int(answer["used"]))

    def note(self, used: int | None = None, retry_after_s: float | None = None,
             banned_s: float | None = None) -> None:
        self._call("SELECT public.recon_note_exchange_weight(%s, %s::integer, %s::numeric, %s::numeric)",
                   (self.egress, used, retry_after_s, banned_s))

    def shared_clock_offset(self, host: str, exchange: str, max_age_s: float) -> int | None:
        """The offset measured from `host` within `max_age_s`, or None."""
        row = self._call("SELECT offset_ms FROM recon.exchange_clock WHERE host = %s AND "
                         "exchange = %s AND measured_at > now() - make_interval(secs => %s)",
                         (host, exchange, float(max_age_s)))
        return int(row[0]) if row else None

    def share_clock_offset(self, host: str, exchange: str, offset_ms: int) -> None:
        self._call("INSERT INTO recon.exchange_clock (host, exchange, offset_ms, measured_at) "
                   "VALUES (%s, %s, %s, now()) ON CONFLICT (host, exchange) DO UPDATE SET "
                   "offset_ms = EXCLUDED.offset_ms, measured_at = EXCLUDED.measured_at "
                   "RETURNING offset_ms", (host, exchange, int(offset_ms)))

    def shared_markets(self, exchange: str, max_age_s: float) -> list | None:
        """The markets (ccxt's parsed list) loaded by any run within `max_age_s`, or None."""
        row = self._call("SELECT markets FROM recon.exchange_markets WHERE exchange = %s AND "
                         "loaded_at > now() - make_interval(secs => %s)",
                         (exchange, float(max_age_s)))
        return row[0] if row else None

    def share_markets(self, exchange: str, markets: list) -> None:
        self._call("INSERT INTO recon.exchange_markets (exchange, markets, loaded_at) "
                   "VALUES (%s, %s, now()) ON CONFLICT (exchange) DO UPDATE SET "
                   "markets = EXCLUDED.markets, loaded_at = EXCLUDED.loaded_at RETURNING exchange",
                   (exchange, Jsonb(markets)))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


class LocalWeightBudget:
    """The same budget for one process only (no database: the demo's trading client, a
    benchmark without Postgres)."""

    def __init__(self, egress: str, limit: int):
        self.egress, self.limit = egress, limit
        self._lock = threading.Lock()
        self._minute, self._used = 0, 0
        self._blocked_until = self._banned_until = 0.0

    def take(self, weight: int) -> int:
        with self._lock:
            now = time.time()
            minute = int(now // 60)
            if minute != self._minute:
                self._minute, self._used = minute, 0
            for until, reason in ((self._banned_until, "banned"),
                                  (self._blocked_until, "retry_after")):
                if until > now:
                    raise WeightBudgetSpent(self.egress, reason, _utc(until), self._used)
            if self._used + weight > self.limit:
                raise WeightBudgetSpent(self.egress, "budget", _utc((minute + 1) * 60), self._used)
            self._used += weight
            return self._used

    def note(self, used: int | None = None, retry_after_s: float | None = None,
             banned_s: float | None = None) -> None:
        with self._lock:
            now = time.time()
            if used is not None and int(now // 60) == self._minute:
                self._used = max(self._used, used)
            if retry_after_s is not None:
                self._blocked_until = max(self._blocked_until, now + retry_after_s)
            if banned_s is not None:
                self._banned_until = max(self._banned_until, now + banned_s)

    def shared_clock_offset(self, host: str, exchange: str, max_age_s: float) -> int | None:
        return None  # this process's own measurement (exchange._CLOCK_OFFSETS) is all there is

    def share_clock_offset(self, host: str, exchange: str, offset_ms: int) -> None:
        return None

    def shared_markets(self, exchange: str, max_age_s: float) -> list | None:
        return None  # this process's cache (exchange._MARKETS_CACHE) is all there is

    def share_markets(self, exchange: str, markets: list) -> None:
        return None

    def close(self) -> None:
        pass


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
