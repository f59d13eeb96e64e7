"""The database: one engine per process, sessions, and dialect-aware helpers.

PostgreSQL is production; SQLite serves a single-box start with the same migrations.
Like the Redis pool, the engine is rebuilt in a forked child (gunicorn workers fork).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from grimbots.settings import Settings

CONNECT_TIMEOUT_SECONDS = 3
SQLITE_BUSY_TIMEOUT_MS = 5000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the web tier read while a worker writes; busy_timeout makes concurrent
    # writers wait instead of failing with "database is locked"; SQLite leaves foreign
    # keys off unless asked on every connection.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str, settings: Settings | None = None) -> Engine:
    """The engine for `url`; `settings` size its pool (the defaults for tools)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "application_name": "grimbots",
    }
    if settings is not None and settings.db_pgbouncer:
        # Transaction pooling: the next statement may run on another server connection.
        connect_args["prepare_threshold"] = None
    elif settings is not None and settings.db_statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    return create_engine(
        url,
        pool_size=settings.db_pool_size if settings else 5,
        max_overflow=settings.db_max_overflow if settings else 5,
        pool_timeout=5,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
    )


class Database:
    """Per-process engine and session factory, rebuilt after fork."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._url = settings.database_url
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    if self._engine is not None:
                        # Drop the parent's pooled sockets without closing them under it.
                        self._engine.dispose(close=False)
                    self._engine = make_engine(self._url, self._settings)
                    self._sessions = sessionmaker(self._engine, expire_on_commit=False)
                    self._pid = os.getpid()
        assert self._engine is not None
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        self.engine  # noqa: B018 - make sure the per-process factory exists
        assert self._sessions is not None
        with self._sessions() as session, session.begin():
            yield session

    def ping(self) -> dict[str, Any]:
        """Health probe: SELECT 1 with a short statement timeout; raises on failure."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SET statement_timeout = 2000"))
            conn.execute(text("SELECT 1"))
        return {"dialect": self.engine.dialect.name}

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def insert_for(session: Session):
    """The dialect's INSERT construct, which has on_conflict_do_nothing/do_update."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert
