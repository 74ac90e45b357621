"""Schema migrations (Alembic), shipped inside the package and configured in code.

Every table the shop keeps is listed by :func:`target_metadata`; the revisions in ``versions/``
build them. ``Database.start()`` runs them on an empty database and, where allowed, on one at
an older revision (see ``pizzashop.core.database``); ``pizzashop db upgrade`` and
``pizzashop db status`` do it by hand. No ``alembic.ini`` is needed: :func:`alembic_config`
builds the configuration.

Adding or changing a table or column
------------------------------------
1. Change the ``Table(...)`` in its module (a new module with tables goes in ``TABLE_MODULES``).
2. Generate the revision (``alembic revision --autogenerate`` against a scratch SQLite database
   brought to head, so no server is needed)::

       .venv/bin/pizzashop db revision -m "payments: add refund_reason"

3. Read the new file in ``pizzashop/core/migrations/versions/`` and fix what autogenerate cannot
   know (renames come out as drop + add; a new NOT NULL column on a table with rows needs a
   ``server_default``). ALTERs are rendered in batch mode, which SQLite needs and PostgreSQL
   runs as plain ALTERs.
4. ``tests/unit/test_migrations.py`` checks that the migrated schema equals the models'
   metadata and that there is one head; run it, commit the revision with the model change.

Revision ids are sequential (``0001``, ``0002``, ...): two branches that both add ``0002``
collide loudly instead of leaving two heads; renumber yours on top of the other.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pizzashop.core.database import metadata

__all__ = [
    "TABLE_MODULES",
    "SchemaState",
    "alembic_config",
    "current_revision",
    "head_revision",
    "new_revision",
    "schema_state",
    "target_metadata",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).parent

TABLE_MODULES = (
    "ingest.dedupe",
    "ingest.outbox",
    "services.kitchen",
    "services.labels",
    "services.notification",
    "services.payment",
    "services.scores",
    "services.status",
    "models.feature_state",
    "models.upsell.history",
)
"""Every module that defines a table; importing them completes :func:`target_metadata`."""


def target_metadata() -> MetaData:
    """The one ``metadata`` every table hangs on, complete once the table modules are imported
    (by name: the kernel knows where tables live but depends on none of those packages)."""
    for name in TABLE_MODULES:
        importlib.import_module(name)
    return metadata


def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration for the shipped scripts; ``url`` only for standalone use."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.set_main_option("path_separator", "os")  # for version_locations; alembic >= 1.16
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a baseline
        raise RuntimeError("no migration scripts found")
    return head


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands: its revision, the code's head, and whether it holds our tables."""

    current: str | None
    head: str
    has_tables: bool

    @property
    def empty(self) -> bool:
        return self.current is None and not self.has_tables

    @property
    def legacy(self) -> bool:
        """Tables made by ``create_all`` before migrations existed: no revision recorded."""
        return self.current is None and self.has_tables

    @property
    def known(self) -> bool:
        """The recorded revision is one this code ships (a newer Pizzashop's is not)."""
        if self.current is None:
            return True
        script = ScriptDirectory.from_config(alembic_config())
        return any(rev.revision == self.current for rev in script.walk_revisions())

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def _state_sync(conn: Connection) -> SchemaState:
    current = MigrationContext.configure(conn).get_current_revision()
    ours = set(target_metadata().tables)
    present = set(inspect(conn).get_table_names())
    return SchemaState(current=current, head=head_revision(), has_tables=bool(ours & present))


def _upgrade_sync(conn: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


async def schema_state_on(conn: AsyncConnection) -> SchemaState:
    return await conn.run_sync(_state_sync)


async def upgrade_on(engine: AsyncEngine, revision: str = "head") -> None:
    """Run the migrations to ``revision`` in one transaction on ``engine``."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade_sync, revision)


async def upgrade(url: str, revision: str = "head") -> SchemaState:
    """Migrate the database at ``url`` to ``revision``; return where it stands afterwards."""
    engine = _engine(url)
    try:
        await upgrade_on(engine, revision)
        async with engine.connect() as conn:
            return await schema_state_on(conn)
    finally:
        await engine.dispose()


async def schema_state(url: str) -> SchemaState:
    engine = _engine(url)
    try:
        async with engine.connect() as conn:
            return await schema_state_on(conn)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The revision recorded in the database at ``url``; None when it has none."""
    return (await schema_state(url)).current


def new_revision(message: str) -> Path:
    """Autogenerate the next revision from the models' metadata; return the new file's path.

    Diffs against a scratch SQLite database brought to head, so no server is needed.
    """
    script = ScriptDirectory.from_config(alembic_config())
    numbers = [int(r.revision) for r in script.walk_revisions() if re.fullmatch(r"\d+", r.revision)]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite+aiosqlite:///{Path(scratch) / 'scratch.db'}"
        return asyncio.run(_new_revision(url, message, rev_id))


async def _new_revision(url: str, message: str, rev_id: str) -> Path:
    engine = _engine(url)
    try:
        await upgrade_on(engine)
        async with engine.begin() as conn:
            return await conn.run_sync(_revision_sync, message, rev_id)
    finally:
        await engine.dispose()


def _revision_sync(conn: Connection, message: str, rev_id: str) -> Path:
    config = alembic_config()
    config.attributes["connection"] = conn
    result: Any = command.revision(config, message=message, autogenerate=True, rev_id=rev_id)
    scripts = result if isinstance(result, list) else [result]
    return Path(scripts[0].path)


def _engine(url: str) -> AsyncEngine:
    return create_async_engine(url)
