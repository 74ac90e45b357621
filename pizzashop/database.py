"""The database: SQLite by default (embedded), PostgreSQL through a URL.

Every package defines its tables with SQLAlchemy Core on the shared ``metadata`` below;
``Database.start()`` creates what is missing. SQLite runs in WAL mode with a busy timeout so the
API and the workers (one process or several) can write to one file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import MetaData, Table, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from pizzashop.errors import ConfigError

logger = logging.getLogger(__name__)

metadata = MetaData()

T = TypeVar("T")


class Database:
    """An async engine plus schema creation. ``async with Database(url) as db: db.engine``."""

    def __init__(self, url: str) -> None:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ConfigError(
                f"unsupported database URL {url!r}: use sqlite+aiosqlite:///path "
                "or postgresql+asyncpg://user:pass@host/db"
            )
        self.url = url
        self._engine: AsyncEngine | None = None
        self._stopped = False

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database is not started")
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def start(self) -> None:
        if self._stopped:
            raise RuntimeError("a stopped Database cannot be restarted")
        if self._engine is not None:
            return
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            path = self.url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
            # One connection per process: SQLite has one writer anyway, and waiting in the
            # pool's asyncio queue is far cheaper than SQLite's busy handler, which sleeps up to
            # 100 ms a round while writers of the same process take turns.
            kwargs["pool_size"] = 1
            kwargs["max_overflow"] = 0
        else:
            kwargs["pool_size"] = 10
        engine = create_async_engine(self.url, **kwargs)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        self._engine = engine
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            stale = await conn.run_sync(_missing_columns)
        if stale:
            await engine.dispose()
            self._engine = None
            raise ConfigError(
                f"the database at {self.url} was made by an older Pizzashop: "
                + "; ".join(f"table {t} lacks {', '.join(c)}" for t, c in stale.items())
                + ". Point PIZZASHOP_DATABASE_URL elsewhere or remove the old file."
            )

    async def stop(self) -> None:
        if self._engine is not None and not self._stopped:
            await self._engine.dispose()
        self._stopped = True

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def insert_ignore(self, table: Table) -> Insert:
        """INSERT that silently skips rows whose key exists: the idempotent write."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()


def chunked(values: Sequence[T], size: int = 500) -> list[Sequence[T]]:
    """``values`` in slices small enough for one ``IN (...)``: SQLite caps bound parameters."""
    return [values[start : start + size] for start in range(0, len(values), size)]


def _missing_columns(sync_conn: Any) -> dict[str, list[str]]:
    """Tables that exist with fewer columns than the code expects (create_all adds none)."""
    inspector = inspect(sync_conn)
    missing: dict[str, list[str]] = {}
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        if lacking := [c.name for c in table.columns if c.name not in present]:
            missing[table.name] = lacking
    return missing


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across process crashes in WAL mode; only an OS crash can drop the tail.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
