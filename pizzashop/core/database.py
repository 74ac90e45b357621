"""The database: SQLite by default (embedded), PostgreSQL through a URL.

Every package defines its tables with SQLAlchemy Core on the shared ``metadata`` below; the
Alembic revisions in ``pizzashop.core.migrations`` build them. ``Database.start()`` brings the
schema to the code's revision or refuses to start:

* an empty database is migrated to head (so the embedded default starts with zero steps);
* a database at the code's head starts as it is;
* a database at an older revision, or one made by ``create_all`` before migrations (tables but
  no ``alembic_version``), is migrated when ``auto_migrate`` holds, else refused with a message
  naming ``pizzashop db upgrade``. ``auto_migrate`` defaults to on for SQLite (a local file that
  one operator owns; nobody else would run the upgrade) and off for PostgreSQL (a shared server,
  where changing the schema belongs in the deploy, run once, not raced by every worker);
* a database at a revision this code does not know (a newer Pizzashop's) is refused.

SQLite runs in WAL mode with a busy timeout so the API and the workers (one process or several)
can write to one file.

Hot paths on SQLite (the order API's group commit, the outbox relay) run a whole transaction as
ONE function in the aiosqlite connection's own thread (``Database.run_sqlite``), with statements
compiled once by SQLAlchemy (``Database.prepare``: the same SQL, the same type processing).
Through the async engine every statement, the commit and the pool's reset are each a hand-off
between the event loop and that thread, and the hand-offs, not SQLite, were most of a commit's
time.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Column, MetaData, Table, event, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolResetState
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

from pizzashop.core.errors import ConfigError
from pizzashop.core.lifecycle import Resource

if TYPE_CHECKING:
    from pizzashop.core.migrations import SchemaState

logger = logging.getLogger(__name__)

metadata = MetaData()

T = TypeVar("T")


class Database(Resource):
    """An async engine plus schema migration. ``async with Database(url) as db: db.engine``.

    ``auto_migrate``: upgrade an older schema at start-up; None means on for SQLite, off for
    PostgreSQL (see the module docstring).
    """

    def __init__(self, url: str, *, auto_migrate: bool | None = None) -> None:
        if not url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ConfigError(
                f"unsupported database URL {url!r}: use sqlite+aiosqlite:///path "
                "or postgresql+asyncpg://user:pass@host/db"
            )
        self.url = url
        self.auto_migrate = url.startswith("sqlite") if auto_migrate is None else auto_migrate
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("Database is not started")
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def _start(self) -> None:
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
            # Roll back on return only when a transaction is open (``_reset_sqlite``): after a
            # read, or a transaction already ended, a rollback is one more thread hand-off.
            kwargs["pool_reset_on_return"] = None
        else:
            kwargs["pool_size"] = 10
        engine = create_async_engine(self.url, **kwargs)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(engine.sync_engine.pool, "reset", _reset_sqlite)
        self._engine = engine  # a failed migration disposes of it in _stop
        await self._migrate(engine)

    async def _migrate(self, engine: AsyncEngine) -> None:
        from pizzashop.core import migrations

        async with engine.connect() as conn:
            state = await migrations.schema_state_on(conn)
        if not state.known:
            raise ConfigError(
                f"the database at {_safe(self.url)} is at revision {state.current}, which this "
                f"Pizzashop does not know (its head is {state.head}): a newer version made it"
            )
        if not state.at_head:
            if not (state.empty or self.auto_migrate):
                where = (
                    "has tables but no migration revision (made before migrations)"
                    if state.legacy
                    else f"is at revision {state.current}, the code at {state.head}"
                )
                raise ConfigError(
                    f"the database at {_safe(self.url)} {where}: "
                    "run `pizzashop db upgrade` (after a backup) and start again"
                )
            await self._upgrade(engine, state)
        async with engine.connect() as conn:
            unmigrated = await conn.run_sync(_missing_columns)
        if unmigrated:
            raise ConfigError(
                "the code defines columns no migration creates: "
                + "; ".join(f"table {t} lacks {', '.join(c)}" for t, c in unmigrated.items())
                + ". Generate one: `pizzashop db revision -m '...'`"
            )

    async def _upgrade(self, engine: AsyncEngine, before: SchemaState) -> None:
        from pizzashop.core import migrations

        logger.info(
            "migrating the database from %s to %s",
            before.current or ("empty" if before.empty else "pre-migration tables"),
            before.head,
            extra={"database": _safe(self.url)},
        )
        try:
            await migrations.upgrade_on(engine)
        except Exception:
            # Two processes starting on one database race to migrate it; the loser fails on
            # what the winner created. Fine if the schema is at head now, else the error stands.
            async with engine.connect() as conn:
                if (await migrations.schema_state_on(conn)).at_head:
                    return
            raise

    async def _stop(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()

    def insert_ignore(self, table: Table) -> Insert:
        """INSERT that silently skips rows whose key exists: the idempotent write."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    def prepare(self, statement: ClauseElement, keys: Sequence[str] = ()) -> Prepared:
        """``statement`` compiled once for this database (SQLite: qmark), ready for
        ``Prepared.params`` in ``run_sqlite``. ``keys``: the columns an INSERT sets."""
        return prepare_for(self.engine.dialect, statement, keys)

    async def run_sqlite(self, work: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """``work(connection)`` on the pool's SQLite connection, in its aiosqlite thread, in one
        hand-off: the pool's one connection is held meanwhile, as by ``engine.connect()``.

        ``write``: ``work`` runs in a ``BEGIN IMMEDIATE`` transaction (the write lock taken
        first, so what it reads stays true until it commits), committed when it returns and
        rolled back when it raises; else it runs outside a transaction (each statement sees
        what is committed). A ``sqlite3`` error comes out as SQLAlchemy's (``IntegrityError``,
        ``OperationalError``), as through the engine. SQLite only."""
        return await run_sqlite_on(self.engine, work, write=write)


def prepare_for(dialect: Dialect, statement: ClauseElement, keys: Sequence[str] = ()) -> Prepared:
    """``Database.prepare`` for an engine's dialect (a store that borrows only an engine)."""
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    assert isinstance(compiled, SQLCompiler)
    names = tuple(compiled.positiontup or ())
    defaults = compiled.construct_params(_check=False) or {}
    binds: list[tuple[str, Callable[[Any], Any] | None, Any]] = []
    for name in names:
        process = compiled._bind_processors.get(name)
        if process is not None and not callable(process):  # a tuple's, per element
            raise ValueError(f"bind parameter {name!r}: tuple values are not supported")
        binds.append((name, process, defaults.get(name)))
    return Prepared(compiled.string, tuple(binds))


async def run_sqlite_on(
    engine: AsyncEngine, work: Callable[[sqlite3.Connection], T], *, write: bool
) -> T:
    """``Database.run_sqlite`` on ``engine`` (a store that borrows only an engine)."""
    async with engine.connect() as conn:
        fairy = await conn.get_raw_connection()
        driver = fairy.driver_connection  # aiosqlite.Connection, as the dialect uses it
        try:
            result: T = await driver._execute(_run, driver._conn, work, write)  # type: ignore[union-attr]
            return result
        except sqlite3.Error as exc:
            raise DBAPIError.instance(
                None, None, exc, sqlite3.Error, dialect=engine.dialect
            ) from exc


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement compiled for SQLite, and how to bind a row to it: per positional parameter
    the row's key, SQLAlchemy's bind processor for its type, and its value when the row has
    none (a literal bound in the statement)."""

    sql: str
    binds: tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]

    def params(self, row: Mapping[str, Any] = {}) -> tuple[Any, ...]:
        return tuple(
            process(row.get(name, default)) if process else row.get(name, default)
            for name, process, default in self.binds
        )


def _run(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], write: bool) -> T:
    """In the connection's thread: ``work`` alone, or in a transaction (``run_sqlite``)."""
    if conn.in_transaction:  # left open by someone (never by the pool: it resets): not ours
        conn.rollback()
    if not write:
        return work(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return result


def chunked(values: Sequence[T], size: int = 500) -> list[Sequence[T]]:
    """``values`` in slices small enough for one ``IN (...)``: SQLite caps bound parameters."""
    return [values[start : start + size] for start in range(0, len(values), size)]


async def rows_by_key(
    conn: AsyncConnection, key: Column[Any], keys: Sequence[Any]
) -> dict[Any, Any]:
    """The rows of ``key``'s table whose ``key`` is in ``keys``, by key (chunked ``IN``)."""
    table = key.table
    rows: dict[Any, Any] = {}
    for chunk in chunked(keys):
        for row in await conn.execute(select(table).where(key.in_(chunk))):
            rows[getattr(row, key.name)] = row
    return rows


def _safe(url: str) -> str:
    """``url`` without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def _missing_columns(sync_conn: Any) -> dict[str, list[str]]:
    """Tables whose columns the code expects but the migrated schema lacks (a forgotten revision).

    Only the tables of modules imported so far are checked; the full check is the migration test.
    """
    inspector = inspect(sync_conn)
    missing: dict[str, list[str]] = {}
    tables = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in tables:
            missing[table.name] = ["the whole table"]
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        if lacking := [c.name for c in table.columns if c.name not in present]:
            missing[table.name] = lacking
    return missing


def _reset_sqlite(dbapi_connection: Any, _record: Any, state: PoolResetState) -> None:
    """The pool's reset on return, for SQLite: a rollback only while a transaction is open."""
    if state.terminate_only or state.transaction_was_reset or not state.asyncio_safe:
        return
    try:
        # aiosqlite's connection, idle now (nothing of it is awaited once it is returned)
        open_ = dbapi_connection._connection._conn.in_transaction
    except Exception:
        open_ = True
    if open_:
        dbapi_connection.rollback()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across process crashes in WAL mode; only an OS crash can drop the tail.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
