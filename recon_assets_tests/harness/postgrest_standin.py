"""A loopback stand-in for PostgREST (Supabase's Data API), for testing `SupabaseStore`.

Why it exists: PostgREST cannot be installed on these machines (no network beyond the Python
package registries, and PostgREST is not a Python package), yet the supabase-py backend must be
tested against something that answers HTTP the way PostgREST does. This module stands in for
PostgREST only, never for Postgres: every call runs the real SQL function on the same real
PostgreSQL the psycopg backend uses, so the data, the SQL, the types and the errors are real;
only the HTTP layer in front of them is ours. It lives in the test tree and is not shipped.

What it implements is just what supabase-py's `rpc()` needs, following PostgREST's documented
behaviour for functions:
- `POST /rest/v1/rpc/<function>` with a JSON object of named arguments. The overload is chosen by
  argument names (like PostgREST's schema cache); the JSON is converted to the declared argument
  types with `json_to_record`, and the function is called with named arguments
  (`fn(a => args.a, ...)`) in one transaction.
- The answer as PostgREST shapes it: a set-returning function gives a JSON array (of objects for
  table/composite rows, of values for `SETOF scalar`), any other function its single JSON value,
  a `void` function `204 No Content`.
- Errors as PostgREST reports them: `{"code", "message", "details", "hint"}` with the SQLSTATE as
  code and PostgREST's status mapping (e.g. 23505 -> 409, P0001 -> 400, 42883 -> 404), PGRST202
  (404) for an unknown function, PGRST102 (400) for a body that is not a JSON object, and 503
  when the database cannot be reached.
- The API gateway's key check: `apikey` must be the configured key (401 "Invalid API key"
  otherwise, as Supabase's gateway answers) and `Authorization` must be `Bearer <that key>`
  (401 PGRST301 otherwise). The key is compared, never logged or echoed.
- The schema a POST names in `Content-Profile` (supabase-py sends its `schema` option) must be
  the exposed one (406 PGRST106 otherwise). supabase-py's rpc() sends no `Prefer` header (it
  would only for a `count`), so none is interpreted.
- Role switching (`switch_roles=True`): the key's role (service key: `service_role`, anon key:
  `anon`) is set with `SET LOCAL ROLE` for the call, as PostgREST does from the JWT's role
  claim, so a missing grant is a `42501` (403; 401 for anon) here as there. The roles must exist
  in the cluster (the test harness creates them, NOLOGIN, before migrating).
- Table endpoints, enough to show what a key can read and write (issue 38: Supabase's public
  keys reach nothing): `GET /rest/v1/<table>` (every row, `select` ignored), `POST` (insert the
  JSON object or array), `PATCH` and `DELETE` (with `column=eq.value` filters only), in the
  exposed schema (`Accept-Profile` / `Content-Profile` must name it), as the key's role.
Not implemented: GET/HEAD rpc, other filters, `Prefer` options (a write answers 201/204 with no
body), JWTs (keys are compared as opaque strings).
"""

import hmac
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import psycopg
from psycopg import sql

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RPC_PATH = re.compile(r"^/rest/v1/rpc/([^/?#]+)/?(?:\?.*)?$")
_TABLE_PATH = re.compile(r"^/rest/v1/([A-Za-z_][A-Za-z0-9_]*)/?(?:\?(.*))?$")

# Input arguments of every overload of a function: names, types, how many have defaults.
_SIGNATURES_SQL = """
SELECT p.oid, p.proretset AS retset, p.prorettype = 'void'::regtype AS returns_void,
       p.pronargdefaults AS n_defaults,
       COALESCE(array_agg(a.name ORDER BY a.ord) FILTER (WHERE a.ord IS NOT NULL), '{}') AS names,
       COALESCE(array_agg(format_type(a.typ, NULL) ORDER BY a.ord)
                FILTER (WHERE a.ord IS NOT NULL), '{}') AS types
FROM pg_proc p
LEFT JOIN LATERAL (
    SELECT t.ord, p.proargnames[t.ord] AS name, t.typ
    FROM unnest(COALESCE(p.proallargtypes, p.proargtypes::oid[])) WITH ORDINALITY AS t(typ, ord)
    WHERE COALESCE(p.proargmodes[t.ord], 'i') IN ('i', 'b', 'v')
) a ON true
WHERE p.proname = %s AND p.pronamespace = to_regnamespace(%s) AND p.prokind = 'f'
GROUP BY p.oid
"""


def _status_for_sqlstate(code: str | None) -> int:
    """PostgREST's mapping of SQLSTATE to HTTP status (docs: "Errors", "SQLSTATE to HTTP")."""
    code = code or ""
    exact = {"23503": 409, "23505": 409, "25006": 405, "P0001": 400, "42883": 404,
             "42P01": 404, "42501": 403, "40001": 500, "53400": 500}
    if code in exact:
        return exact[code]
    prefixes = {"08": 503, "09": 500, "0L": 403, "0P": 403, "22": 400, "23": 400, "25": 500,
                "28": 403, "2D": 500, "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503,
                "54": 500, "55": 500, "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500,
                "XX": 500, "42": 400}
    return prefixes.get(code[:2], 400)


class PostgrestStandIn:
    """PostgREST's rpc endpoint over a real Postgres DSN, on 127.0.0.1 in a thread.

    Use as a context manager, or `start()` / `stop()`; `url` is the "project URL" to give
    supabase-py (it appends /rest/v1 itself).
    """

    def __init__(self, dsn: str, service_key: str, schema: str = "public", port: int = 0,
                 anon_key: str | None = None, switch_roles: bool = False):
        self.dsn = dsn
        self.schema = schema
        self._key = service_key
        # The role each key's JWT claims (Supabase: the service key is role service_role, the
        # anon key role anon). With switch_roles, a call runs under `SET LOCAL ROLE <role>` in
        # its transaction, as PostgREST does, so missing grants fail here as they would there.
        self._roles = {service_key: "service_role", **({anon_key: "anon"} if anon_key else {})}
        self.switch_roles = switch_roles
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests_served = 0

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the PostgREST stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "PostgrestStandIn":
        standin = self

        class Handler(_RpcHandler):
            owner = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]  # a restart reuses the same port
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="postgrest-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "PostgrestStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what a request does ----------------------------------------------------------------

    def authorize(self, apikey: str | None,
                  authorization: str | None) -> tuple[int, dict] | str:
        """The role the request runs as, or the (status, body) refusing it."""
        if not apikey:
            return 401, {"message": "No API key found in request",
                         "hint": "No `apikey` request header or url param was found."}
        key = next((k for k in self._roles if hmac.compare_digest(apikey.encode(), k.encode())),
                   None)
        if key is None:
            return 401, {"message": "Invalid API key",
                         "hint": "Double check your Supabase `anon` or `service_role` API key."}
        expected = f"Bearer {key}"
        if not authorization or not hmac.compare_digest(authorization.encode(), expected.encode()):
            return 401, {"code": "PGRST301", "message": "No suitable key or wrong key type",
                         "details": None, "hint": None}
        return self._roles[key]

    def rpc(self, function: str, args: dict, role: str = "service_role") -> tuple[int, str | None]:
        """(status, JSON text or None for no body) of calling `function` with `args`, as
        `role` when the stand-in switches roles."""
        if not _IDENTIFIER.fullmatch(function) or not all(_IDENTIFIER.fullmatch(k) for k in args):
            return 404, json.dumps(self._not_found(function, args))
        try:
            with psycopg.connect(self.dsn, connect_timeout=5,
                                 application_name="postgrest-standin") as conn:
                signature = self._pick_overload(conn, function, args)
                if signature is None:
                    return 404, json.dumps(self._not_found(function, args))
                query = self._call_sql(function, args, signature)
                if self.switch_roles:
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                row = conn.execute(query, (json.dumps(args),)).fetchone()
        except psycopg.OperationalError as exc:
            if getattr(exc, "sqlstate", None):
                return self._pg_error(exc)
            return 503, json.dumps({"code": "PGRST000", "message": "Database client error. "
                                    "Retrying the connection.", "details": None, "hint": None})
        except psycopg.Error as exc:
            status, body = self._pg_error(exc)
            if status == 403 and role == "anon":  # PostgREST: 401 for anon, 403 when signed in
                status = 401
            return status, body
        body = row[0]
        if signature["retset"]:
            return 200, body if body is not None else "[]"
        if signature["returns_void"]:
            return 204, None
        return 200, body if body is not None else "null"

    def table(self, method: str, table: str, filters: list[tuple[str, str]], body,
              role: str) -> tuple[int, str | None]:
        """(status, JSON text or None) of reading (GET) or writing (POST, PATCH, DELETE)
        `table` of the exposed schema as `role` (always switched: the point is what a key's
        role may do)."""
        if not all(_IDENTIFIER.fullmatch(c) for c, _v in filters):
            return 400, json.dumps({"code": "PGRST100", "message": "unsupported filter"})
        target = sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(table))
        where = sql.SQL(" AND ").join(
            sql.SQL("{}::text = {}").format(sql.Identifier(c), sql.Literal(v))
            for c, v in filters) if filters else sql.SQL("true")
        rows = json.dumps(body if isinstance(body, list) else [body])
        if method == "GET":
            query = sql.SQL("SELECT COALESCE(json_agg(t), '[]')::text FROM {} t").format(target)
        elif method == "POST":  # the payload's columns, as PostgREST inserts them
            first = (body[0] if isinstance(body, list) and body else body) or {}
            columns = [c for c in first if _IDENTIFIER.fullmatch(c)] if isinstance(
                first, dict) else []
            if not columns:
                return 400, json.dumps({"code": "PGRST102", "message": "Empty or invalid json"})
            cols = sql.SQL(", ").join(map(sql.Identifier, columns))
            query = sql.SQL("INSERT INTO {t} ({cols}) SELECT {cols} FROM json_populate_recordset("
                            "NULL::{t}, {rows}::json)").format(t=target, cols=cols,
                                                               rows=sql.Literal(rows))
        elif method == "PATCH":
            columns = [c for c in (body or {}) if _IDENTIFIER.fullmatch(c)]
            if not isinstance(body, dict) or not columns:
                return 400, json.dumps({"code": "PGRST102", "message": "Empty or invalid json"})
            query = sql.SQL("UPDATE {t} SET ({cols}) = (SELECT {cols} FROM json_populate_record("
                            "NULL::{t}, {row}::json)) WHERE {w}").format(
                t=target, cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
                row=sql.Literal(json.dumps(body)), w=where)
        else:
            query = sql.SQL("DELETE FROM {} WHERE {}").format(target, where)
        try:
            with psycopg.connect(self.dsn, connect_timeout=5,
                                 application_name="postgrest-standin") as conn:
                if conn.execute("SELECT to_regclass(%s)",
                                (f"{self.schema}.{table}",)).fetchone()[0] is None:
                    return 404, json.dumps({"code": "42P01", "message": f"relation "
                                            f"\"{self.schema}.{table}\" does not exist"})
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                cursor = conn.execute(query)
                found = cursor.fetchone()[0] if method == "GET" else None
        except psycopg.Error as exc:
            status, text = self._pg_error(exc)
            if status == 403 and role == "anon":  # PostgREST: 401 for anon, 403 when signed in
                status = 401
            return status, text
        return (200, found) if method == "GET" else (201 if method == "POST" else 204, None)

    def _pick_overload(self, conn: psycopg.Connection, function: str, args: dict) -> dict | None:
        keys = set(args)
        for oid, retset, returns_void, n_defaults, names, types in conn.execute(
                _SIGNATURES_SQL, (function, self.schema)).fetchall():
            if any(not name for name in names):
                continue  # unnamed arguments cannot be called by name
            required = set(names[:len(names) - n_defaults])
            if required <= keys <= set(names):
                return {"retset": retset, "returns_void": returns_void,
                        "types": dict(zip(names, types))}
        return None

    def _call_sql(self, function: str, args: dict, signature: dict) -> sql.Composed:
        # PostgREST's shape: the JSON body becomes a typed record, the function is called with
        # named arguments from it, and the rows are aggregated to JSON in the database.
        if args:
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(k), sql.SQL(signature["types"][k]))
                for k in args)
            named = sql.SQL(", ").join(
                sql.SQL("{} => pgrst_args.{}").format(sql.Identifier(k), sql.Identifier(k))
                for k in args)
            source = sql.SQL("json_to_record(%s::json) AS pgrst_args({columns}), "
                             "LATERAL {schema}.{fn}({named}) pgrst_call").format(
                columns=columns, named=named, schema=sql.Identifier(self.schema),
                fn=sql.Identifier(function))
        else:
            source = sql.SQL("(SELECT %s::json) AS pgrst_unused, LATERAL {schema}.{fn}() pgrst_call"
                             ).format(schema=sql.Identifier(self.schema), fn=sql.Identifier(function))
        if signature["retset"]:
            select = sql.SQL("SELECT json_agg(pgrst_call)::text FROM ")
        else:
            select = sql.SQL("SELECT (json_agg(pgrst_call) -> 0)::text FROM ")
        return select + source

    def _not_found(self, function: str, args: dict) -> dict:
        listed = ", ".join(sorted(args))
        return {"code": "PGRST202",
                "message": f"Could not find the function {self.schema}.{function}({listed}) "
                           "in the schema cache",
                "details": "Searched for the function with the given argument names, but no "
                           "matches were found.",
                "hint": None}

    @staticmethod
    def _pg_error(exc: psycopg.Error) -> tuple[int, str]:
        diag = exc.diag
        return _status_for_sqlstate(exc.sqlstate), json.dumps({
            "code": exc.sqlstate, "message": diag.message_primary or str(exc).splitlines()[0],
            "details": diag.message_detail, "hint": diag.message_hint})


class _RpcHandler(BaseHTTPRequestHandler):
    owner: PostgrestStandIn
    protocol_version = "HTTP/1.1"
    server_version = "postgrest-standin"

    def log_message(self, format, *args):  # noqa: A002 - quiet; and headers are never logged
        pass

    def _send(self, status: int, body: str | None) -> None:
        self.send_response(status)
        data = body.encode() if body is not None else b""
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _table_request(self, method: str, raw: bytes) -> None:
        match = _TABLE_PATH.match(self.path)
        if not match:
            return self._send(404, json.dumps({"message": "no Route matched with those values"}))
        role = self.owner.authorize(self.headers.get("apikey"), self.headers.get("Authorization"))
        if not isinstance(role, str):
            return self._send(role[0], json.dumps(role[1]))
        profile = self.headers.get("Accept-Profile" if method == "GET" else "Content-Profile")
        if profile is not None and profile != self.owner.schema:
            return self._send(406, json.dumps({
                "code": "PGRST106", "message": "Invalid schema: " + profile, "details": None,
                "hint": f"Only the following schemas are exposed: {self.owner.schema}"}))
        filters = []
        for column, value in parse_qsl(match.group(2) or "", keep_blank_values=True):
            if column in ("select", "limit", "order", "columns", "on_conflict"):
                continue
            if not value.startswith("eq."):
                return self._send(400, json.dumps({"code": "PGRST100",
                                                   "message": "the stand-in filters by eq only"}))
            filters.append((column, value[3:]))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._send(400, json.dumps({"code": "PGRST102",
                                               "message": "Empty or invalid json"}))
        status, text = self.owner.table(method, match.group(1), filters, body, role)
        self.owner.requests_served += 1
        self._send(status, text)

    def do_PATCH(self):  # noqa: N802
        self._table_request("PATCH", self._read_body())

    def do_DELETE(self):  # noqa: N802
        self._table_request("DELETE", self._read_body())

    def do_POST(self):  # noqa: N802 - http.server's naming
        raw = self._read_body()
        match = _RPC_PATH.match(self.path)
        if not match:
            return self._table_request("POST", raw)
        role = self.owner.authorize(self.headers.get("apikey"), self.headers.get("Authorization"))
        if not isinstance(role, str):
            return self._send(role[0], json.dumps(role[1]))
        # The schema a POST is for (supabase-py sends its `schema` option): only the exposed
        # one, as PostgREST's db-schemas setting (PGRST106 otherwise).
        profile = self.headers.get("Content-Profile")
        if profile is not None and profile != self.owner.schema:
            return self._send(406, json.dumps({
                "code": "PGRST106", "message": "Invalid schema: " + profile, "details": None,
                "hint": f"Only the following schemas are exposed: {self.owner.schema}"}))
        try:
            args = json.loads(raw or b"{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            return self._send(400, json.dumps({
                "code": "PGRST102", "message": "Empty or invalid json", "details": None,
                "hint": None}))
        status, body = self.owner.rpc(match.group(1), args, role)
        self.owner.requests_served += 1
        self._send(status, body)

    def do_GET(self):  # noqa: N802
        self._read_body()
        if _RPC_PATH.match(self.path):
            return self._send(404, json.dumps({"message": "the stand-in calls rpc by POST only"}))
        self._table_request("GET", b"")
