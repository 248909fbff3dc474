"""The trading tables and every `recon.*` table as comparable rows: what two runs of the same
flow must end with, less what differs between any two runs (an explicit list of id, time and
digest columns; run ids, times and the scenario's clock masked inside every other value, JSON
documents included). The Supabase-path test compares the two database paths
with it; the kill-point tests compare a killed and recovered loop with an uninterrupted one."""

from __future__ import annotations

import json
import re

import psycopg

# What differs between two runs of the same flow, by name (everything else is compared, after
# masking run ids and times inside values, `normal`):
# - row ids of sequences;
IGNORED_IDS = {"id"}
# - when: the wall clock of the run, not the outcome;
IGNORED_TIMES = {
    "at", "applied_at", "checked_at", "closed_at", "created_at", "db_read_at", "delivered_at",
    "exchange_read_at", "filled_at", "finished_at", "first_seen_at", "last_attempt_at",
    "last_auto_resume_at", "last_fill_at", "last_income_ms", "last_seen_at", "loaded_at",
    "measured_at", "next_attempt_at", "observed_at", "offset_ms", "opened_at", "paused_at",
    "raised_at", "read_at", "released_at", "resume_checked_at", "resume_earliest_at",
    "reviewed_at", "revoked_at", "slice_opened_at", "started_at", "stored_at", "swept_at",
    "updated_at", "waited_ms"}
# - digests of run ids (a synthetic exit's key hashes the cycle its streak started in), which no
#   mask can undo; the rows they key are compared column by column.
IGNORED_DIGESTS = {"idempotency_key", "activity_key"}
IGNORED_EXACT = IGNORED_IDS | IGNORED_TIMES | IGNORED_DIGESTS
# Shared or clock-driven state, not the outcome of the flow.
SKIPPED_TABLES = {"recon.schema_migrations", "recon.asset_values", "recon.exchange_weight_budget",
                  "recon.exchange_clock", "recon.exchange_markets",
                  # probes spent per cycle: a correction run killed and run again spends more
                  "recon.order_probe_budgets"}

# Binance names a liquidation's order after its time (autoclose-<ms>-...): the scenario's clock.
_CLOCK_IN_IDS = re.compile(r"autoclose-\d+")
# Dagster's run ids (a cycle's id is its run's) inside keys and messages.
_RUN_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Times inside messages (e.g. when a minimum pause ends) and documents (ISO, UTC).
_TIMES = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(\+00:00|\+00|Z)?")
# Keys of JSON documents (evidence, details) whose values are times, e.g. ccxt's
# lastTradeTimestamp (epoch ms): the run's clock, like the time columns.
_TIME_KEYS = re.compile(r"(?i)(timestamp|time|_at|_ms|datetime)$")


def _mask_time_keys(value):
    if isinstance(value, dict):
        return {k: "<time>" if _TIME_KEYS.search(k) and v is not None else _mask_time_keys(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_time_keys(v) for v in value]
    return value


def normal(value):
    """`value` (JSON-like) with the clock in order ids, the run ids and the times masked."""
    text = _CLOCK_IN_IDS.sub("autoclose-<ms>", json.dumps(value, sort_keys=True, default=str))
    return _mask_time_keys(json.loads(_TIMES.sub("<time>", _RUN_IDS.sub("<run>", text))))


def kept(column: str) -> bool:
    return column not in IGNORED_EXACT


def table_rows(dsn: str, keep=None) -> dict[str, list[str]]:
    """{schema.table: its rows, masked and sorted}; `keep(table, row)` can leave rows out
    (given the whole row, before masking)."""
    with psycopg.connect(dsn) as conn:
        names = [f"{s}.{t}" for s, t in conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'recon') AND table_type = 'BASE TABLE' "
            "ORDER BY 1, 2").fetchall()]
        out = {}
        for name in names:
            if name in SKIPPED_TABLES:
                continue
            rows = [r[0] for r in conn.execute(f"SELECT to_jsonb(t) FROM {name} t").fetchall()]
            out[name] = sorted(json.dumps(normal({k: v for k, v in row.items() if kept(k)}),
                                          sort_keys=True)
                               for row in rows if keep is None or keep(name, row))
        return out


def difference(a, b, path="", names=("a", "b")) -> str | None:
    """Where two JSON-like values first differ (a readable assertion message), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = difference(a.get(key), b.get(key), f"{path}.{key}", names)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items in {names[0]}, {len(b)} in {names[1]}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = difference(x, y, f"{path}[{i}]", names)
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} in {names[0]}, {b!r} in {names[1]}"


def table_differences(a: dict[str, list[str]], b: dict[str, list[str]],
                      names=("a", "b")) -> dict[str, str]:
    """{table: where it first differs} for the tables whose rows differ."""
    out = {}
    for table in sorted(set(a) | set(b)):
        if a.get(table) != b.get(table):
            # The rows are JSON texts (sortable); compared as documents, the message names the
            # first differing column or key rather than two whole rows.
            parsed = [None if rows is None else [json.loads(r) for r in rows]
                      for rows in (a.get(table), b.get(table))]
            out[table] = difference(*parsed, names=names) or "differs"
    return out
