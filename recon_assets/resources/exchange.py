"""The exchange (the truth), through ccxt: `binanceusdm` by default.

Credentials: one environment variable, `RECON_EXCHANGE_CREDENTIALS`, holding JSON
`{"<exchange account>": {"apiKey": "...", "secret": "..."}}`, read through `EnvVar`. Keys and
secrets never appear in logs, metadata or errors (messages name the account only).

What makes a snapshot trustworthy or absent:
- every response is checked before ccxt parses it: a body that is not JSON, or an item whose
  field is missing or of the wrong shape, raises `ExchangePayloadError` naming the endpoint, the
  item and the field, at once (no retry: a broken payload is not a transient fault);
- `NetworkError` (timeouts, dropped connections), `RateLimitExceeded`/`DDoSProtection` (429,
  418), `ExchangeNotAvailable`, 5xx answers and stale responses (an `Age`/`Date` header older
  than `max_response_age_s`) are retried with exponential backoff, honouring `Retry-After`;
  after `max_attempts` the fetch fails with `ExchangeFetchError`;
- `AuthenticationError` (bad key, bad signature) fails at once.

Every HTTP request is counted (per endpoint, with latency and retries) in `RequestStats`, which
the snapshot assets put in their metadata and the benchmark reads.

`api_base_url` points every `urls['api']` entry at another host (the loopback simulator).
"""

import functools
import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, Optional
from urllib.parse import parse_qsl, urlsplit

import ccxt
import dagster as dg
import requests
import urllib3
from pydantic import Field

from recon_assets.core.exchange_snapshot import market_bounds
from recon_assets.core.fees import needs_price
from recon_assets.core.request_weights import WEIGHT_LIMIT_PER_MINUTE, request_weight
from recon_assets.core.rules import TRADES_QUERY_WINDOW_DAYS
from recon_assets.resources.binance_usdm import (CONDITIONAL_CLIENT_ID, CONDITIONAL_ORDERS,
                                                 HEDGE_LEGS, INCOME_OF_TRADES,
                                                 INCOME_PAGE_LIMIT, POSITION_LISTING,
                                                 TRIGGERED_AS_ORDER, check_payload)
from recon_assets.resources.exchange_errors import (ExchangeBudgetSpent, ExchangeCredentialsError,
                                                    ExchangeFetchError, ExchangeHostRefused,
                                                    ExchangePayloadError, ExchangeUnknownMarket,
                                                    ResponseTooLarge)
from recon_assets.resources.guard import RunConfigGuard
from recon_assets.resources.loopback import is_loopback_host
from recon_assets.resources.weight_budget import (LocalWeightBudget, SharedWeightBudget,
                                                  WeightBudgetSpent)

# Re-exported: callers import the errors and the payload check from here.
__all__ = ["ExchangeBudgetSpent", "ExchangeCredentialsError", "ExchangeFetchError",
           "ExchangePayloadError", "ExchangeResource", "ExchangeSession", "RequestStats",
           "check_payload"]


class StaleResponseError(ccxt.NetworkError):
    """The exchange (or a cache in front of it) served data older than the allowed age."""


class _ClockSkew(Exception):
    """-1021: the exchange found our request's timestamp outside its recvWindow."""


def response_age_s(headers: Any, now: float | None = None) -> float:
    """How old a response says it is: its `Age` header, or the distance from its `Date`."""
    if not headers:
        return 0.0
    now = time.time() if now is None else now
    age = 0.0
    raw_age = headers.get("Age")
    if raw_age is not None:
        try:
            age = max(age, float(raw_age))
        except ValueError:
            pass
    raw_date = headers.get("Date")
    if raw_date:
        try:
            age = max(age, now - parsedate_to_datetime(raw_date).timestamp() - 1.0)  # 1 s resolution
        except (TypeError, ValueError, IndexError):
            pass
    return max(age, 0.0)


# What a ccxt error may quote of a signed request: its signature, and a key or secret by name.
_SECRET_PARAMS = re.compile(
    r"((?:signature|apikey|api_key|secret|x-mbx-apikey)\"?\s*[=:]\s*\"?)[^&\s\"',}]+", re.I)


def scrub_exchange_error(message: str, *secrets: str | None) -> str:
    """The one scrub of every exchange error before it is raised, logged or stored: the request
    signature and any key or secret named in it, and the literal `secrets` (the account's API key
    and secret) wherever they appear."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "<redacted>")
    return _SECRET_PARAMS.sub(r"\1<redacted>", message)


# The largest answer read from the exchange. Binance USD-M's largest (exchangeInfo, some
# hundreds of markets; a page of 1,000 fills) is a few MB; an answer beyond this is no answer to
# trust, and it is refused before it is read whole into memory.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024


def size_cap(limit: int):
    """A `requests` response hook (it runs before the body is read) that refuses a body larger
    than `limit` bytes: by its declared Content-Length, else by reading at most `limit` + 1."""

    def capped(response, *_args, **_kwargs):
        endpoint = f"{response.request.method} {urlsplit(response.request.url).path}"
        refused = (f"the exchange's answer to {endpoint} is larger than the {limit} bytes a "
                   "response may have (max_response_bytes): refused unread")
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response.close()
            raise ResponseTooLarge(refused)
        try:  # a broken body is the network's error, as requests reports it (ccxt retries it)
            body = response.raw.read(limit + 1, decode_content=True)
        except urllib3.exceptions.ProtocolError as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from exc
        except urllib3.exceptions.DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.exceptions.ConnectionError(exc) from exc
        if len(body) > limit:
            response.close()
            raise ResponseTooLarge(refused)
        response._content, response._content_consumed = body, True
        return response

    return capped


# ---- the ccxt client -------------------------------------------------------------------------
@dataclass
class RequestStats:
    """HTTP requests made to the exchange (retries included) and the time they took."""

    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    max_age_s: float = 0.0
    first_at: float | None = None  # wall-clock time of the first and the last response
    last_at: float | None = None
    clock_offset_ms: int | None = None  # this machine's clock minus the exchange's, as measured
    weight: int = 0  # request weight charged to the egress's budget
    budget_waits: int = 0  # times a request waited for the next minute's budget

    def as_metadata(self) -> dict:
        return {"requests": self.requests, "retries": self.retries,
                "request_seconds": round(self.seconds, 4),
                "requests_by_endpoint": dict(sorted(self.by_endpoint.items())),
                "max_response_age_s": round(self.max_age_s, 3),
                "clock_offset_ms": self.clock_offset_ms, "request_weight": self.weight,
                "budget_waits": self.budget_waits}


# ccxt logs every request's headers (the API key among them) at DEBUG: its clients log here,
# a logger held at INFO whatever the root level is.
_CCXT_LOGGER = logging.getLogger("recon_assets.exchange.ccxt")
_CCXT_LOGGER.setLevel(logging.INFO)


@functools.lru_cache(maxsize=None)
def _client_class(exchange_id: str) -> type:
    base = getattr(ccxt, exchange_id, None)
    if base is None or not isinstance(base, type) or not issubclass(base, ccxt.Exchange):
        raise ValueError(f"unknown ccxt exchange id {exchange_id!r}")

    class CheckedClient(base):
        """ccxt's client, with every response counted, checked and age-tested."""

        recon_stats: RequestStats
        recon_max_age_s: float = 30.0
        recon_last_status: int | None = None
        recon_retry_after: str | None = None
        recon_budget = None  # the egress's shared weight budget (resources.weight_budget)
        recon_max_budget_wait_s: float = 0.0
        recon_used_weight: int = 0
        recon_listed_ids: list = []  # the symbols (exchange ids) the last positionRisk listed
        recon_position_sides: set = set()  # and the position sides it named (BOTH, or legs)

        def _charge(self, method: str, url: str) -> None:
            """Charge the request's documented weight to the shared budget before sending it;
            wait for the next minute when it is that close, else WeightBudgetSpent."""
            parts = urlsplit(url)
            weight = request_weight(method, parts.path, dict(parse_qsl(parts.query)))
            self.recon_stats.weight += weight
            try:
                self.recon_used_weight = self.recon_budget.take(weight)
            except WeightBudgetSpent as spent:
                if spent.reason != "budget" or spent.wait_s() > self.recon_max_budget_wait_s:
                    raise
                self.recon_stats.budget_waits += 1
                time.sleep(spent.wait_s() + 0.05)
                self.recon_used_weight = self.recon_budget.take(weight)

        def fetch(self, url, method="GET", headers=None, body=None):
            stats = self.recon_stats
            path = urlsplit(url).path
            endpoint = f"{method} {path}"
            if self.recon_budget is not None:
                self._charge(method, url)
            stats.requests += 1
            stats.by_endpoint[endpoint] = stats.by_endpoint.get(endpoint, 0) + 1
            self.recon_last_status, self.recon_retry_after = None, None
            started = time.monotonic()
            try:
                response = super().fetch(url, method, headers, body)
            finally:
                stats.seconds += time.monotonic() - started
            self._note_used_weight(self.last_response_headers)
            if isinstance(response, (str, bytes)) or response is None:
                text = response.decode("utf8", "replace") if isinstance(response, bytes) else (response or "")
                raise ExchangePayloadError(
                    f"malformed exchange payload from {endpoint}: the body is not valid JSON "
                    f"(truncated or garbled; {len(text)} characters, starting {text[:60]!r})")
            # Age from the exchange's clock (ours minus the measured offset): a local clock that
            # is off does not make every response look stale. The clock reading itself is
            # what measures the offset, so it is not age-tested.
            offset_s = (self.options.get("timeDifference") or 0) / 1000
            age = 0.0 if path.endswith("/time") else response_age_s(
                self.last_response_headers, time.time() - offset_s)
            stats.max_age_s = max(stats.max_age_s, age)
            if age > self.recon_max_age_s:
                raise StaleResponseError(f"{endpoint} served data {age:.0f} s old (the bound is "
                                         f"{self.recon_max_age_s:.0f} s)")
            known = set(self.markets_by_id) if self.markets_by_id else None
            check_payload(method, path, response, known, self._bounds())
            if path.endswith(POSITION_LISTING):  # ccxt keeps only non-zero positions of it
                self.recon_listed_ids = [item["symbol"] for item in response]
                self.recon_position_sides = {item.get("positionSide") for item in response}
            now = time.time()
            stats.first_at = now if stats.first_at is None else stats.first_at
            stats.last_at = now
            return response

        def _bounds(self) -> dict:
            """Each market's largest quantity and price, by exchange id (for the payload
            checks), worked out once per set of loaded markets."""
            cached = getattr(self, "_recon_bounds", None)
            if cached is None or cached[0] is not self.markets_by_id:
                cached = (self.markets_by_id, {
                    market_id: market_bounds(markets[0])
                    for market_id, markets in (self.markets_by_id or {}).items() if markets})
                self._recon_bounds = cached
            return cached[1]

        def _note_used_weight(self, headers) -> None:
            raw = (headers or {}).get("X-MBX-USED-WEIGHT-1M") or (headers or {}).get(
                "x-mbx-used-weight-1m")
            if raw and self.recon_budget is not None:
                try:
                    used = int(raw)
                except ValueError:
                    return
                if used > self.recon_used_weight:  # others spend from this IP too
                    self.recon_budget.note(used=used)
                    self.recon_used_weight = used

        def handle_errors(self, code, reason, url, method, headers, body, response, request_headers,
                          request_body):
            self.recon_last_status = code
            if headers:
                self.recon_retry_after = headers.get("Retry-After")
            if code in (418, 429) and self.recon_budget is not None:
                # Nobody sends through this IP before it ends: not this run, not another one.
                try:
                    wait = float(self.recon_retry_after or 60)
                except ValueError:
                    wait = 60.0
                try:
                    self.recon_budget.note(retry_after_s=wait if code == 429 else None,
                                           banned_s=wait if code == 418 else None)
                except Exception as exc:  # noqa: BLE001 - raised here, ccxt's error (which
                    # quotes the signed URL) would be its context: say it without it
                    raise ExchangeFetchError(
                        f"the exchange answered {code} (wait {wait:.0f} s) and it could not be "
                        f"recorded in the shared weight budget: {type(exc).__name__}") from None
            return super().handle_errors(code, reason, url, method, headers, body, response,
                                         request_headers, request_body)

    CheckedClient.__name__ = f"Checked{base.__name__}"
    return CheckedClient


_MARKETS_CACHE: dict[tuple[str, str], tuple[float, Any]] = {}
_MARKETS_LOCK = threading.Lock()
_HOST = socket.gethostname()  # a measured clock offset holds for this machine's clock
# The exchange's clock as this process knows it (measured, or taken from this host's shared
# measurement) for `time_sync_ttl_s`, used by every session:
# (exchange id, base URL) -> (monotonic time known, our clock minus the exchange's).
_CLOCK_OFFSETS: dict[tuple[str, str], tuple[float, int]] = {}
# Without a database, the sessions of one process share a budget per egress.
_LOCAL_BUDGETS: dict[tuple[str, str, str], LocalWeightBudget] = {}


def point_urls_at(urls: dict, base_url: str) -> dict:
    """Every string entry of ccxt's `urls['api']`, re-rooted at `base_url` (paths kept)."""
    base_url = base_url.rstrip("/")
    out = {}
    for key, value in urls.items():
        if isinstance(value, str):
            out[key] = base_url + urlsplit(value).path
        elif isinstance(value, dict):
            out[key] = point_urls_at(value, base_url)
        else:
            out[key] = value
    return out


class ExchangeSession:
    """One account's conversation with the exchange for one cycle: a ccxt client, its request
    statistics, and the retrying reads the snapshot assets use."""

    def __init__(self, resource: "ExchangeResource", account: str, client, stats: RequestStats,
                 sleep=time.sleep):
        self.resource = resource
        self.account = account
        self.client = client
        self.stats = stats
        self._sleep = sleep
        self._prices: dict[tuple[str, int], Decimal | None] = {}
        self._clock_known = False
        self._markets_reloaded = False

    def close(self) -> None:
        """End the session (its connection to the shared weight budget)."""
        budget = getattr(self.client, "recon_budget", None)
        if budget is not None:
            budget.close()

    def _exchange_key(self) -> tuple[str, str]:
        """Which exchange this is, for what is shared per exchange (markets, the clock)."""
        return (self.resource.exchange_id, self.resource.api_base_url or "")

    # The exchange's clock.

    def sync_clock(self, force: bool = False) -> int:
        """Our clock minus the exchange's (ms): this process's fresh measurement, else this
        host's (shared through Postgres by every run on it), else measured now (GET time), as
        when `force`; ccxt signs every request with it (timeDifference)."""
        key = self._exchange_key()
        ttl = self.resource.time_sync_ttl_s
        budget = getattr(self.client, "recon_budget", None)
        exchange = "|".join(key)
        with _MARKETS_LOCK:
            known = _CLOCK_OFFSETS.get(key)
        if not force and known is not None and time.monotonic() - known[0] <= ttl:
            offset = known[1]
        else:
            shared = None if force or budget is None else budget.shared_clock_offset(
                _HOST, exchange, ttl)
            if shared is not None:
                offset = shared
            else:
                offset = int(self._with_retries("measure the exchange's clock (GET time)",
                                                self.client.load_time_difference))
                if budget is not None:
                    budget.share_clock_offset(_HOST, exchange, offset)
            with _MARKETS_LOCK:
                _CLOCK_OFFSETS[key] = (time.monotonic(), offset)
        self.client.options["timeDifference"] = offset
        self.stats.clock_offset_ms = offset
        self._clock_known = True
        return offset

    def _scrub(self, exc: BaseException) -> str:
        return scrub_exchange_error(str(exc), getattr(self.client, "apiKey", None),
                                    getattr(self.client, "secret", None),
                                    getattr(self.client, "password", None))

    # The retry policy.
    def call(self, label: str, fn, *args, **kwargs):
        """Run one ccxt read with retries; raise ExchangeFetchError (naming the account and the
        call, never the credentials) when it cannot succeed. A -1021 (our timestamp outside
        the exchange's recvWindow: the clock moved) resyncs the clock once and retries once."""
        if not self._clock_known:
            self.sync_clock()
        try:
            return self._call_knowing_markets(label, fn, *args, **kwargs)
        except _ClockSkew:
            self.sync_clock(force=True)
            try:
                return self._call_knowing_markets(label, fn, *args, **kwargs)
            except _ClockSkew as exc:
                raise ExchangeFetchError(
                    f"{self.account}: {label} failed: the exchange still rejects our timestamps "
                    f"after a clock resync (offset {self.stats.clock_offset_ms} ms): "
                    f"{exc}") from None

    def _call_knowing_markets(self, label: str, fn, *args, **kwargs):
        """An answer naming a symbol the loaded markets do not list (a listing newer than the
        process's markets) reloads the markets once, then the read is retried once."""
        try:
            return self._with_retries(label, fn, *args, **kwargs)
        except ExchangeUnknownMarket:
            if not self.reload_markets_once():
                raise
            return self._with_retries(label, fn, *args, **kwargs)

    def reload_markets_once(self) -> bool:
        """Read the markets again (a listing newer than the process's cache), once per
        session; False when they were reloaded already (or never loaded)."""
        if self._markets_reloaded or not self.client.markets:
            return False
        self._markets_reloaded = True
        self.load_markets(force=True)
        return True

    def _with_retries(self, label: str, fn, *args, **kwargs):
        res = self.resource
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except ccxt.InvalidNonce as exc:
                raise _ClockSkew(self._scrub(exc)) from None
            except WeightBudgetSpent as exc:
                raise ExchangeBudgetSpent(f"{self.account}: {label}: {exc}", exc) from None
            except ExchangePayloadError as exc:  # (its kind kept: an unknown market is retried)
                raise type(exc)(f"{self.account}: {label}: {exc}") from None
            except ccxt.AuthenticationError as exc:
                raise ExchangeFetchError(
                    f"{self.account}: {label}: the exchange rejected the credentials "
                    f"({type(exc).__name__}: {self._scrub(exc)}); check RECON_EXCHANGE_CREDENTIALS "
                    f"for this account") from None
            except ccxt.BaseError as exc:
                status = getattr(self.client, "recon_last_status", None)
                retryable = isinstance(exc, ccxt.NetworkError) or (
                    isinstance(exc, ccxt.OperationFailed) and not isinstance(exc, ccxt.BadResponse)) or (
                    status is not None and status >= 500)
                if not retryable:
                    raise ExchangeFetchError(f"{self.account}: {label} failed: {type(exc).__name__}: "
                                             f"{self._scrub(exc)}") from None
                wait = min(res.backoff_max_s, res.backoff_initial_s * 2 ** (attempt - 1))
                wait *= 1 + 0.25 * random.random()
                retry_after = getattr(self.client, "recon_retry_after", None)
                if retry_after:
                    try:
                        wait = max(wait, float(retry_after))
                    except ValueError:
                        pass
                if attempt >= res.max_attempts or wait > res.max_retry_after_s:
                    why = (f"the exchange asked to wait {wait:.0f} s" if wait > res.max_retry_after_s
                           else f"{attempt} attempts")
                    raise ExchangeFetchError(
                        f"{self.account}: {label} failed after {why}: {type(exc).__name__}: "
                        f"{self._scrub(exc)}") from None
                self.stats.retries += 1
                self._sleep(wait)

    def load_markets(self, force: bool = False) -> dict:
        """Markets (exchangeInfo) for `markets_ttl_s`: this process's, else those any run
        loaded (shared through Postgres), else read now, as when `force`."""
        key = self._exchange_key()
        ttl = self.resource.markets_ttl_s
        budget = getattr(self.client, "recon_budget", None)
        with _MARKETS_LOCK:
            cached = _MARKETS_CACHE.get(key)
            if cached and not force and time.monotonic() - cached[0] < ttl:
                self.client.set_markets(cached[1])
                return self.client.markets
        shared = None if force or budget is None else budget.shared_markets("|".join(key), ttl)
        if shared:
            markets = self.client.set_markets(shared)
        else:
            markets = self.call("load markets (GET exchangeInfo)", self.client.load_markets, True)
            if budget is not None:
                budget.share_markets("|".join(key), list(markets.values()))
        with _MARKETS_LOCK:
            _MARKETS_CACHE[key] = (time.monotonic(), list(markets.values()))
        return markets

    def fetch_open_orders(self, symbols: list[str] | None = None) -> list[dict]:
        """The account's open orders: of `symbols`, one request each (weight 1 each), or, when
        `symbols` is None, every symbol in one request (weight 40)."""
        return self._open_orders("open orders", symbols, {})

    def fetch_open_conditional_orders(self, symbols: list[str] | None = None) -> list[dict]:
        """The open conditional orders (stop, take-profit, trailing), which Binance serves from
        the Algo Service (openAlgoOrders) apart from the regular ones: per symbol or, when
        `symbols` is None, all at once (same weights as open orders)."""
        return self._open_orders("open conditional orders", symbols, CONDITIONAL_ORDERS)

    def _open_orders(self, what: str, symbols: list[str] | None, params: dict) -> list[dict]:
        if symbols is None:
            return self.call(f"fetch {what}", self.client.fetch_open_orders, None, None, None,
                             params)
        return [o for symbol in symbols
                for o in self.call(f"fetch {what} of {symbol}", self.client.fetch_open_orders,
                                   symbol, None, None, params)]

    def fetch_positions(self) -> tuple[list[dict], set[str], bool]:
        """Every non-zero position of the account, in one request; the symbols the exchange
        listed (positionRisk names each symbol with a position or open orders, and ccxt keeps
        only the non-zero positions, so the listing is read from the raw answer); and whether
        the account is in hedge mode (its rows are LONG and SHORT legs)."""
        positions = self.call("fetch positions", self.client.fetch_positions)
        listed = {self.client.safe_symbol(market_id, None, None, "contract")
                  for market_id in self.client.recon_listed_ids}
        hedged = bool(self.client.recon_position_sides & HEDGE_LEGS) or any(
            p.get("hedged") for p in positions)
        return positions, listed | {p["symbol"] for p in positions}, hedged

    def fetch_traded_symbols(self, since_ms: int, max_pages: int | None = None
                             ) -> tuple[set[str], set[str], int | None, bool]:
        """The symbols with trades since `since_ms`, from the income history (every symbol, one
        request of weight 30 per page of 1000 entries, oldest first): a fill leaves a
        commission, a closing fill a realised PnL. Returns (symbols that are markets, symbols
        that are not, the time of the last entry read, whether the history was read to its
        end)."""
        markets, strangers = set(), set()
        last_ms: int | None = None
        start, pages = int(since_ms), 0
        max_pages = max_pages or self.resource.max_trade_pages
        while True:
            page = self.call("fetch income history", self.client.fapiPrivateGetIncome,
                             {"startTime": start, "limit": INCOME_PAGE_LIMIT})
            pages += 1
            for entry in page:
                last_ms = max(last_ms or 0, int(entry["time"]))
                if entry.get("incomeType") not in INCOME_OF_TRADES or not entry.get("symbol"):
                    continue
                if entry["symbol"] in (self.client.markets_by_id or {}):
                    markets.add(self.client.safe_symbol(entry["symbol"], None, None, "contract"))
                else:
                    strangers.add(entry["symbol"])
            if len(page) < INCOME_PAGE_LIMIT:
                return markets, strangers, last_ms, True
            if pages >= max_pages:
                return markets, strangers, last_ms, False
            # Entries of one millisecond may straddle pages: start again at that millisecond
            # (symbols are a set); move on if a whole page was one millisecond.
            start = last_ms if last_ms > start else start + 1

    def fetch_fills(self, symbol: str, after_id: int | None, since_ms: int | None) -> tuple[list[dict], bool]:
        """The account's fills on `symbol` after trade id `after_id` (or since `since_ms` when
        there is no cursor yet), oldest first, page by page. Returns (fills, complete): complete
        is False when `max_trade_pages` pages were read and more remain."""
        limit = self.resource.trades_page_limit
        fills: list[dict] = []
        pages = 0
        while True:
            if after_id is not None:
                page = self.call(f"fetch fills of {symbol}", self.client.fetch_my_trades, symbol,
                                 None, limit, {"fromId": after_id + 1})
            else:
                page = self.call(f"fetch fills of {symbol}", self.client.fetch_my_trades, symbol,
                                 since_ms, limit)
            pages += 1
            page = sorted(page, key=lambda t: int(t["id"]))
            fills.extend(page)
            if page:
                after_id = int(page[-1]["id"])
            if len(page) < limit:
                return fills, True
            if pages >= self.resource.max_trade_pages:
                return fills, False

    def fetch_order_fills(self, order_id: str, symbol: str, start_ms: int | None,
                          end_ms: int | None = None) -> list[dict]:
        """The fills of one order, read over its own time range (`start_ms`, its creation, to
        `end_ms`, its last update or now) in windows of TRADES_QUERY_WINDOW_DAYS: without a
        range the exchange answers for the last 7 days only, so an older order's fills would be
        missing."""
        now = self.exchange_now_ms()
        end_ms = min(int(end_ms), now) if end_ms else now
        if start_ms is None:
            return self.call(f"fetch fills of order {order_id}", self.client.fetch_my_trades,
                             symbol, None, None, {"orderId": order_id})
        window = TRADES_QUERY_WINDOW_DAYS * 86_400_000 - 1
        fills: dict[str, dict] = {}
        start = int(start_ms)
        while start <= end_ms:
            stop = min(start + window, end_ms)
            for fill in self.call(f"fetch fills of order {order_id}", self.client.fetch_my_trades,
                                  symbol, start, None, {"orderId": order_id, "endTime": stop}):
                fills[str(fill["id"])] = fill
            start = stop + 1
        return sorted(fills.values(), key=lambda f: int(f["id"]))

    def fetch_conditional_order(self, client_order_id: str, symbol: str, label: str) -> dict | None:
        """The order as the Algo Service knows it (None when it does not): while it waits for
        its trigger, or cancelled/expired before it, the conditional order itself; once
        triggered, the regular order it became, under the conditional order's client id and
        with `algoId` saying where it came from (core.corrections accepts that id for the
        database's exchange order id)."""
        try:
            algo = self.call(f"{label} (conditional)", self.client.fetch_order, None, symbol,
                             {**CONDITIONAL_ORDERS, CONDITIONAL_CLIENT_ID: client_order_id})
        except ExchangeFetchError as exc:
            if isinstance(exc.__context__, ccxt.OrderNotFound):
                return None
            raise
        actual = (algo.get("info") or {}).get(TRIGGERED_AS_ORDER)
        if not actual:
            return {**algo, "algoId": str(algo["id"])}
        triggered = self.call(f"{label} (triggered as order {actual})", self.client.fetch_order,
                              str(actual), symbol)
        return {**triggered, "clientOrderId": algo.get("clientOrderId"), "algoId": str(algo["id"])}

    def exchange_now_ms(self) -> int:
        """Now by the exchange's clock (ours less the measured offset)."""
        return int(time.time() * 1000) - int(self.client.options.get("timeDifference") or 0)

    def fetch_order(self, order_id: str, symbol: str) -> dict:
        """One order by exchange id (the targeted probe)."""
        return self.call(f"fetch order {order_id}", self.client.fetch_order, order_id, symbol)

    def fetch_mark_prices(self, symbols: list[str]) -> dict[str, float]:
        """The mark price of each symbol (premiumIndex, one request per symbol: weight 1 each,
        where all symbols at once weigh 10). A read that fails fails the snapshot."""
        prices = {}
        for symbol in symbols:
            ticker = self.call(f"fetch mark price of {symbol}", self.client.fetch_mark_price, symbol)
            mark = ticker.get("markPrice") if isinstance(ticker, dict) else None
            if mark is None and isinstance(ticker, dict):
                mark = (ticker.get("info") or {}).get("markPrice")
            if mark is not None:
                prices[symbol] = float(mark)
        return prices

    def asset_price_usd(self, asset: str, at_ms: int) -> Decimal | None:
        """What one unit of `asset` was worth in USD at `at_ms`: the close of the 1-minute candle
        of its USDT market that contains that moment (GET klines, once per asset and minute in a
        session). None when the exchange lists no such market, or the lookup failed: a fee in
        that asset is then recorded as unknown, never as zero."""
        minute = int(at_ms) // 60_000 * 60_000
        key = (asset.upper(), minute)
        if key not in self._prices:
            self._prices[key] = self._candle_close(f"{asset.upper()}/USDT:USDT", minute)
        return self._prices[key]

    def _candle_close(self, symbol: str, minute: int) -> Decimal | None:
        if symbol not in self.load_markets():
            return None
        try:
            candles = self.call(f"price of {symbol} at {minute}", self.client.fetch_ohlcv,
                                symbol, "1m", minute, 1)
        except ExchangeFetchError:
            return None
        if not candles or int(candles[0][0]) != minute:
            return None
        try:
            return Decimal(str(candles[0][4]))
        except (InvalidOperation, ValueError):
            return None

    def fee_prices(self, fills: list[dict]) -> dict[str, Decimal | None]:
        """For each ccxt fill (by fill id) whose fee is not in a USD-like asset, the USD price
        of that asset at the fill's time (None when unknown)."""
        prices: dict[str, Decimal | None] = {}
        for fill in fills:
            fee = fill.get("fee") or {}
            if needs_price(fee.get("currency")) and fill.get("timestamp") is not None:
                prices[str(fill["id"])] = self.asset_price_usd(fee["currency"], fill["timestamp"])
        return prices


class ExchangeResource(RunConfigGuard, dg.ConfigurableResource):
    """The exchange through ccxt (Binance USD-M by default), with retries and request counts."""

    exchange_id: str = Field(default="binanceusdm", description="ccxt exchange id.")
    credentials: str = Field(
        repr=False,
        description="JSON {account: {apiKey, secret}}; set it through "
                    "EnvVar('RECON_EXCHANGE_CREDENTIALS'). Never logged.")
    api_base_url: Optional[str] = Field(
        default=None, description="Point every ccxt API URL at this host (e.g. the simulator): "
                                  "a loopback host, or the one api_allowed_host names.")
    api_allowed_host: Optional[str] = Field(
        default=None, description="The one non-loopback host api_base_url may name "
                                  "(RECON_EXCHANGE_API_ALLOWED_HOST); unset: loopback only.")
    demo_trading: bool = Field(
        default=False, description="Use the exchange's demo-trading environment (Binance: "
                                   "demo-fapi.binance.com), through ccxt's enable_demo_trading.")
    ccxt_options: str = Field(
        default="{}", description="JSON object of extra ccxt options, merged over the project's "
                                  "(e.g. {\"defaultType\": \"future\"}).")
    timeout_ms: int = Field(default=10_000, description="ccxt HTTP timeout per request (ms).")
    recv_window_ms: int = Field(default=10_000, description="Binance recvWindow for signed requests (ms).")
    max_attempts: int = Field(default=4, description="Attempts per read before the snapshot fails.")
    backoff_initial_s: float = Field(default=0.5, description="First retry delay; doubles per attempt.")
    backoff_max_s: float = Field(default=8.0, description="Longest delay between two attempts.")
    max_retry_after_s: float = Field(
        default=30.0, description="Fail instead of waiting when the exchange asks for longer.")
    max_response_age_s: float = Field(
        default=30.0, description="A response older than this (Age/Date headers) is stale: retried.")
    max_response_bytes: int = Field(
        default=MAX_RESPONSE_BYTES, gt=0,
        description="A response body larger than this is refused unread (the cycle fails).")
    trades_page_limit: int = Field(default=1000, description="userTrades page size (Binance max 1000).")
    max_trade_pages: int = Field(
        default=20, description="Pages of fills read per symbol and cycle; beyond, the snapshot is incomplete.")
    markets_ttl_s: int = Field(
        default=3600, description="How long loaded markets are reused, by every run "
                                  "(recon.exchange_markets) and in a process.")
    weight_limit_per_minute: int = Field(
        default=WEIGHT_LIMIT_PER_MINUTE,
        description="Request weight one egress (IP) may spend per clock minute; Binance USD-M "
                    "allows 2400. Shared by every run and process through Postgres.")
    max_budget_wait_s: float = Field(
        default=5.0, description="When the minute's budget is spent, wait for the next minute "
                                 "if it starts within this many seconds; else fail the read.")
    time_sync_ttl_s: int = Field(
        default=600, description="How long a measured offset from the exchange's clock is reused "
                                 "by every run on this host (recon.exchange_clock) and in a "
                                 "process (a -1021 remeasures it at once).")
    enable_rate_limit: bool = Field(default=True, description="ccxt's client-side rate limiter.")
    fills_window_hours: int = Field(
        default=72, description="The exchange_fills snapshot holds the account's fills of this many hours.")
    fills_max_skip_s: int = Field(
        default=900, description="Re-read a symbol's fills at least this often, even when unchanged.")
    income_sweep_interval_s: int = Field(
        default=1200, description="Read each account's income history (every symbol, weight 30) "
                                 "this often, to find fills on symbols the snapshot does not "
                                 "otherwise consider; 0 turns the sweep off.")
    max_order_probes: int = Field(
        default=20, description="Orders looked up per cycle to learn a fill's client_order_id.")
    max_correction_probes: int = Field(
        default=50, ge=0,
        description="Orders the lifecycle correction probes one by one per account and cycle "
                    "(all its profiles' runs together); the rest wait for the next cycle.")
    max_snapshot_age_s: float = Field(
        default=120.0, description="Freshness check: the snapshot is older than this when checked.")
    max_snapshot_spread_s: float = Field(
        default=30.0, description="Freshness check: first and last read further apart than this.")

    def _credentials_for(self, account: str) -> tuple[str, str, str | None]:
        try:
            data = json.loads(self.credentials)
        except (TypeError, ValueError):
            raise ExchangeCredentialsError(
                "RECON_EXCHANGE_CREDENTIALS is not valid JSON; expected "
                '{"<account>": {"apiKey": "...", "secret": "..."}}') from None
        entry = data.get(account) if isinstance(data, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("apiKey"), str) or not entry.get(
                "apiKey") or not isinstance(entry.get("secret"), str) or not entry.get("secret"):
            raise ExchangeCredentialsError(
                f"RECON_EXCHANGE_CREDENTIALS has no apiKey and secret for exchange account {account!r}")
        password = entry.get("password")
        if password is not None and (not isinstance(password, str) or not password):
            raise ExchangeCredentialsError(
                f"RECON_EXCHANGE_CREDENTIALS: the password (passphrase) of exchange account "
                f"{account!r} must be non-empty text when given")
        return entry["apiKey"], entry["secret"], password

    def _ccxt_options(self) -> dict:
        try:
            options = json.loads(self.ccxt_options or "{}")
        except ValueError:
            options = None
        if not isinstance(options, dict):
            raise ValueError("ccxt_options (RECON_EXCHANGE_CCXT_OPTIONS) must be a JSON object of "
                             "ccxt options, e.g. {\"defaultType\": \"future\"}")
        return options

    def accounts(self) -> list[str]:
        """The accounts that have credentials (names only)."""
        try:
            data = json.loads(self.credentials)
        except (TypeError, ValueError):
            return []
        return sorted(data) if isinstance(data, dict) else []

    def build_client(self, account: str, stats: RequestStats | None = None):
        """A ccxt client for `account`, counting into `stats`. Also for trading in the demo and
        tests (its writes are not retried: a blind retry of an order can place it twice)."""
        api_key, secret, password = self._credentials_for(account)
        config = {
            "apiKey": api_key,
            "secret": secret,
            "timeout": self.timeout_ms,
            "enableRateLimit": self.enable_rate_limit,
            "logger": _CCXT_LOGGER,
            "options": {
                "fetchCurrencies": False,
                "fetchMargins": False,
                "warnOnFetchOpenOrdersWithoutSymbol": False,
                "recvWindow": self.recv_window_ms,
                # Leverage brackets only feed ccxt's margin estimates, which reconciliation does
                # not use: skipping them saves a request per cycle.
                "leverageBrackets": {},
                **self._ccxt_options(),
            },
        }
        if password is not None:  # the passphrase some exchanges need (OKX, KuCoin, ...)
            config["password"] = password
        client = _client_class(self.exchange_id)(config)
        if self.demo_trading:  # Binance's demo-trading environment (ccxt's urls["demo"])
            client.enable_demo_trading(True)
        if self.api_base_url:
            check_api_host(self.api_base_url, self.api_allowed_host)
            client.urls["api"] = point_urls_at(client.urls["api"], self.api_base_url)
        client.recon_stats = stats if stats is not None else RequestStats()
        client.recon_max_age_s = self.max_response_age_s
        client.session.hooks["response"].append(size_cap(self.max_response_bytes))
        return client

    def egress(self, account: str) -> str:
        """The egress (IP) the account's requests leave through: its credentials' optional
        `egress` name, else "default". Each egress has its own weight budget."""
        try:
            entry = json.loads(self.credentials).get(account)
        except (TypeError, ValueError, AttributeError):
            entry = None
        name = entry.get("egress") if isinstance(entry, dict) else None
        return name if isinstance(name, str) and name else "default"

    def weight_budget(self, account: str, database=None):
        """The account's egress budget: shared through the trading database when `database` (a
        TradingStore, either backend) is given, else by the sessions of this process only."""
        egress = self.egress(account)
        if database is not None:
            return SharedWeightBudget(database, egress, self.weight_limit_per_minute)
        with _MARKETS_LOCK:
            key = (self.exchange_id, self.api_base_url or "", egress)
            budget = _LOCAL_BUDGETS.get(key)
            if budget is None or budget.limit != self.weight_limit_per_minute:
                budget = _LOCAL_BUDGETS[key] = LocalWeightBudget(egress, self.weight_limit_per_minute)
            return budget

    def session(self, account: str, stats: RequestStats | None = None, sleep=time.sleep,
                database=None) -> ExchangeSession:
        """A session for one account and one cycle; `session.stats` counts its requests, and
        every request is charged to the account's egress budget (see `weight_budget`)."""
        stats = stats if stats is not None else RequestStats()
        client = self.build_client(account, stats)
        client.recon_budget = self.weight_budget(account, database)
        client.recon_max_budget_wait_s = self.max_budget_wait_s
        return ExchangeSession(self, account, client, stats, sleep)


# Set through their own variables (secrets through EnvVar), not RECON_EXCHANGE_<FIELD>.
_NOT_FROM_ENV = {"credentials", "api_base_url"}


def check_api_host(api_base_url: str, allowed_host: str | None) -> None:
    """Refuse (`ExchangeHostRefused`) a base URL whose host is not loopback and not
    `allowed_host`: the signed requests carry the API key to whatever host this names."""
    host = (urlsplit(api_base_url).hostname or "").lower()
    # A URL's hostname is never a socket path: loopback here means localhost or 127/8, ::1.
    if is_loopback_host(host) or (allowed_host and host == allowed_host.strip().lower()):
        return
    raise ExchangeHostRefused(
        f"RECON_EXCHANGE_API_BASE_URL names the host {host or '(none)'}, which is not loopback: "
        "the exchange's API key is only sent to the exchange's own URLs, the local simulator, or "
        "the one host RECON_EXCHANGE_API_ALLOWED_HOST names")


def exchange_settings_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The ExchangeResource fields set in the environment: RECON_EXCHANGE_<FIELD> for each
    field (e.g. RECON_EXCHANGE_EXCHANGE_ID, RECON_EXCHANGE_DEMO_TRADING,
    RECON_EXCHANGE_WEIGHT_LIMIT_PER_MINUTE); values are validated by the resource's types."""
    return {name: environ[f"RECON_EXCHANGE_{name.upper()}"]
            for name in ExchangeResource.model_fields
            if name not in _NOT_FROM_ENV and f"RECON_EXCHANGE_{name.upper()}" in environ}


def forget_process_state() -> None:
    """Forget what this process shares between sessions (markets, the clock offset): as a
    fresh process would. For tests and benchmarks."""
    with _MARKETS_LOCK:
        _MARKETS_CACHE.clear()
        _CLOCK_OFFSETS.clear()
        _LOCAL_BUDGETS.clear()
