"""The trading database through supabase-py: Supabase's Data API (PostgREST), for deployments
that hold only a project URL and a service key.

It offers what callers use of `PostgresStore` (the `TradingStore` base class in database.py):
- `snapshot_account(account)` calls `rpc('recon_snapshot_account', {'p_account': account})`, the
  same SQL function (db/functions/public.recon_snapshot_account.sql) `PostgresStore` runs with SELECT, so both backends see the
  same snapshot, read in one statement;
- `call(function, params)` calls any SQL function by named arguments through `rpc()` (how
  corrections are applied on this backend: the same SQL functions as the psycopg path);
- `describe()` names the project URL's host, nothing secret.

Failure is never an empty answer: a network error, a timeout, an HTTP error from PostgREST, a body
that is not JSON or a snapshot without its four parts raises `SupabaseStoreError` (a
`SupabaseUnavailableError`, also a `ConnectionError`, when PostgREST cannot be reached), naming the
function and the project host. The service key is held in an `EnvVar`, hidden from the resource's
repr, and scrubbed from every error message; exceptions are raised `from None` so no chained httpx
request (whose headers carry the key) travels with them.

PostgREST's own rules apply here: it has no transactions across calls and no advisory locks, so
multi-step corrections must be single SQL functions (each rpc() is one transaction), and the
functions must be in a schema the Data API exposes (`public` by default).
"""

from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import httpx
from postgrest.exceptions import APIError
from pydantic import Field
from supabase import ClientOptions, create_client

from recon_assets.resources.database import TradingStore

SNAPSHOT_PARTS = ("profiles", "orders", "positions", "trade_slices")


class SupabaseStoreError(RuntimeError):
    """A Data API call failed; the message names the function and the host, never the key."""


class SupabaseUnavailableError(SupabaseStoreError, ConnectionError):
    """The Data API could not be reached (connection refused or dropped, timeout)."""


class SupabaseStore(TradingStore):
    """The trading database (Supabase) through supabase-py and PostgREST's rpc()."""

    url: str = Field(description="Supabase project URL, e.g. https://<ref>.supabase.co; set it "
                                 "through EnvVar('RECON_SUPABASE_URL').")
    service_key: str = Field(repr=False,
                             description="Supabase service-role key; set it through "
                                         "EnvVar('RECON_SUPABASE_SERVICE_ROLE_KEY'). Never logged.")
    schema_name: str = Field(default="public", description="Schema the SQL functions live in; "
                                                           "must be exposed by the Data API.")
    timeout_s: float = Field(default=30.0, description="HTTP timeout of one rpc() call, seconds.")

    def describe(self) -> str:
        try:
            parts = urlsplit(self.url)
            if parts.scheme in ("http", "https") and parts.hostname:
                port = f":{parts.port}" if parts.port else ""
                return f"supabase {parts.scheme}://{parts.hostname}{port}"
        except ValueError:
            pass
        return "<supabase>"

    def _scrub(self, text: str) -> str:
        key = self.service_key
        return text.replace(key, "<redacted>") if key and len(key) >= 4 else text

    def _rpc(self, function: str, params: dict[str, Any]) -> Any:
        """One rpc() call; returns the decoded JSON (None for 204 No Content) or raises.

        Errors are built inside the except blocks but raised outside them, so they carry no
        `__context__` (the httpx request in it holds the key in its headers)."""
        seen: dict[str, Any] = {}

        def remember(response: httpx.Response) -> None:
            seen["status"] = response.status_code
            seen["content_type"] = response.headers.get("content-type", "")

        where = f"rpc {function} at {self.describe()}"
        failure: SupabaseStoreError | None = None
        http = httpx.Client(timeout=self.timeout_s, event_hooks={"response": [remember]})
        try:
            options = ClientOptions(schema=self.schema_name, httpx_client=http,
                                    postgrest_client_retry=False, auto_refresh_token=False,
                                    persist_session=False)
            try:
                client = create_client(self.url, self.service_key, options=options)
                response = client.rpc(function, params).execute()
            except httpx.TimeoutException:
                failure = SupabaseUnavailableError(
                    f"{where}: no answer within {self.timeout_s:g}s")
            except httpx.TransportError as exc:
                failure = SupabaseUnavailableError(
                    f"{where}: cannot reach the Data API ({type(exc).__name__}: "
                    f"{self._scrub(str(exc)) or 'no detail'})")
            except APIError as exc:
                failure = SupabaseStoreError(
                    self._api_error_message(where, seen.get("status"), exc))
            except Exception as exc:  # noqa: BLE001 - supabase's URL/key validation, bad JSON, ...
                failure = SupabaseStoreError(
                    f"{where}: {type(exc).__name__}: {self._scrub(str(exc))}")
        finally:
            http.close()
        if failure is not None:
            raise failure
        status = seen.get("status")
        if status == 204:
            return None
        if "json" not in seen.get("content_type", ""):
            raise SupabaseStoreError(
                f"{where}: answer is not JSON (HTTP {status}, content type "
                f"{seen.get('content_type') or 'none'!r})")
        return response.data

    def _api_error_message(self, where: str, status: int | None, exc: APIError) -> str:
        code = f", code {exc.code}" if exc.code and str(exc.code) != str(status) else ""
        message = self._scrub(str(exc.message or "no message"))
        hint = f" (hint: {self._scrub(str(exc.hint))})" if exc.hint else ""
        if str(exc.code) == "42501":  # the key was accepted; its role lacks a privilege
            return (f"{where}: permission denied for the key's role (HTTP {status}{code}: "
                    f"{message}){hint}; RECON_SUPABASE_SERVICE_ROLE_KEY must be the "
                    "service-role key, and the database migrated by `recon migrate`")
        if status in (401, 403):
            return (f"{where}: the Data API refused the service key (HTTP {status}{code}: "
                    f"{message}){hint}; check RECON_SUPABASE_SERVICE_ROLE_KEY")
        return f"{where} failed (HTTP {status}{code}): {message}{hint}"

    def call(self, function: str, params: dict[str, Any] | None = None) -> Any:
        """Call the SQL function `function` by named arguments through rpc(): a set-returning
        function gives a list, any other function its value (None for void)."""
        return self._rpc(function, dict(params or {}))

    def snapshot_account(self, account: str) -> dict:
        """The JSON of `recon_snapshot_account(account)`, as `PostgresStore.snapshot_account`."""
        snapshot = self._rpc("recon_snapshot_account", {"p_account": account})
        if not isinstance(snapshot, dict) or not all(
                isinstance(snapshot.get(part), list) for part in SNAPSHOT_PARTS) \
                or not snapshot.get("read_at"):
            raise SupabaseStoreError(
                f"rpc recon_snapshot_account at {self.describe()}: malformed snapshot for "
                f"account {account!r} (expected read_at and the lists {', '.join(SNAPSHOT_PARTS)})")
        return snapshot
