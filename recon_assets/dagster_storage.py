"""Dagster's own storage (runs, event logs, schedules) on PostgreSQL, holding its connections.

dagster-postgres opens a new connection for every statement outside the webserver (SQLAlchemy's
`NullPool`), so a run worker, the daemon and the code server connect and disconnect hundreds of
times per reconciliation cycle: measured, 484 new connections per account cycle, and with them
most of a cycle's wall time (`benchmarks/cycle.py --storage stock,pooled`). This class is
dagster-postgres's storage with the pool the webserver already uses (one connection kept per
storage, more opened under load and closed after), in every process that loads the instance.
Configured in `deploy/dagster.yaml` as custom storage; the tables and migrations are
dagster-postgres's, unchanged, so the two are interchangeable on the same database.
"""

from __future__ import annotations

from typing import Any

from dagster import Field, IntSource
from dagster._core.storage.config import pg_config
from dagster._serdes import ConfigurableClassData
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

# The webserver's own defaults (`dagster-webserver --db-pool-recycle / --db-pool-max-overflow`).
POOL_RECYCLE_S = 3600
POOL_MAX_OVERFLOW = 20


class PooledPostgresStorage(DagsterPostgresStorage):
    """dagster-postgres's storage with a connection pool in every process, not only the webserver."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider: Any = None,
                 pool_recycle_s: int = POOL_RECYCLE_S, pool_max_overflow: int = POOL_MAX_OVERFLOW,
                 statement_timeout_ms: int = 0):
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self.pool_recycle_s = pool_recycle_s
        self.pool_max_overflow = pool_max_overflow
        # The webserver calls this again with its own statement timeout; elsewhere none (0),
        # as with dagster-postgres's own storage.
        for storage in (self._run_storage, self._event_log_storage, self._schedule_storage):
            storage.optimize_for_webserver(statement_timeout=statement_timeout_ms,
                                           pool_recycle=pool_recycle_s,
                                           max_overflow=pool_max_overflow)

    @classmethod
    def config_type(cls) -> dict:
        return {
            **pg_config(),
            "pool_recycle_s": Field(IntSource, is_required=False, default_value=POOL_RECYCLE_S,
                                    description="Seconds before a held connection is replaced."),
            "pool_max_overflow": Field(IntSource, is_required=False,
                                       default_value=POOL_MAX_OVERFLOW,
                                       description="Connections opened beyond the one held, "
                                                   "while threads need them at once."),
            "statement_timeout_ms": Field(IntSource, is_required=False, default_value=0,
                                          description="Statement timeout of every connection "
                                                      "(0: none)."),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None,
                          config_value: Any) -> "PooledPostgresStorage":
        return cls(postgres_url=pg_url_from_config(config_value),
                   should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                   inst_data=inst_data,
                   token_provider=get_token_provider_from_config(config_value),
                   pool_recycle_s=config_value.get("pool_recycle_s", POOL_RECYCLE_S),
                   pool_max_overflow=config_value.get("pool_max_overflow", POOL_MAX_OVERFLOW),
                   statement_timeout_ms=config_value.get("statement_timeout_ms", 0))
