"""The per-IP request-weight budget, shared through Postgres by every run and process that
reads through one egress (`recon.exchange_weight_budget`, charged and noted by the SQL functions
`recon_take_exchange_weight` / `recon_note_exchange_weight`). The exchange client charges each
request its documented weight (core.request_weights) before sending it, and notes what the
exchange answers: its used-weight header, a Retry-After (429), a ban (418).

Through the same store, what every run reads from the exchange alike (migration 0015): the
exchange's clock as measured from this host (`recon.exchange_clock`) and the markets
(`recon.exchange_markets`); one read serves every run while it is fresh. Every access is a SQL
function called through the store's `call`, so it works over either backend."""

from __future__ import annotations

import datetime as dt
import threading
import time



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


class SharedWeightBudget:
    """One egress's budget in the trading database (`database`: a TradingStore, either backend),
    through its SQL functions."""

    def __init__(self, database, egress: str, limit: int):
        self.database, self.egress, self.limit = database, egress, limit

    def take(self, weight: int) -> int:
        """Charge `weight`; the weight used this minute, or WeightBudgetSpent."""
        answer = self.database.call("recon_take_exchange_weight", {
            "p_egress": self.egress, "p_weight": int(weight), "p_limit": int(self.limit)})
        if answer["granted"]:
            return int(answer["used"])
        raise WeightBudgetSpent(self.egress, answer["reason"],
                                dt.datetime.fromisoformat(answer["until"]), int(answer["used"]))

    def note(self, used: int | None = None, retry_after_s: float | None = None,
             banned_s: float | None = None) -> None:
        self.database.call("recon_note_exchange_weight", {
            "p_egress": self.egress, "p_used": used, "p_retry_after_s": retry_after_s,
            "p_banned_s": banned_s})

    def shared_clock_offset(self, host: str, exchange: str, max_age_s: float) -> int | None:
        """The offset measured from `host` within `max_age_s`, or None."""
        offset = self.database.call("recon_shared_clock_offset", {
            "p_host": host, "p_exchange": exchange, "p_max_age_s": float(max_age_s)})
        return None if offset is None else int(offset)

    def share_clock_offset(self, host: str, exchange: str, offset_ms: int) -> None:
        self.database.call("recon_share_clock_offset", {
            "p_host": host, "p_exchange": exchange, "p_offset_ms": int(offset_ms)})

    def shared_markets(self, exchange: str, max_age_s: float) -> list | None:
        """The markets (ccxt's parsed list) loaded by any run within `max_age_s`, or None."""
        return self.database.call("recon_shared_markets", {
            "p_exchange": exchange, "p_max_age_s": float(max_age_s)})

    def share_markets(self, exchange: str, markets: list) -> None:
        self.database.call("recon_share_markets", {"p_exchange": exchange, "p_markets": markets})

    def close(self) -> None:
        """Nothing to release: the store keeps (or does not keep) its own connections."""


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
