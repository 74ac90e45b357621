"""Schema migrations: from empty, with rows in place, and in step with the models' tables."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from pizzashop.core import migrations
from pizzashop.core.database import Database
from pizzashop.core.errors import ConfigError
from tests.support.db import POSTGRES_URL, db_params

ROOT = Path(__file__).resolve().parents[2]
FIX = (
    "Generate a revision for it:  .venv/bin/pizzashop db revision -m '<what changed>'  "
    "(alembic revision --autogenerate against a scratch database at head; see "
    "pizzashop/core/migrations/__init__.py), review the file in "
    "pizzashop/core/migrations/versions/ and commit it with the model change."
)


@pytest.fixture(params=db_params())
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of a database with nothing in it: a new file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    assert POSTGRES_URL is not None
    name = f"pizzashop_mig_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def _table_names(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()


def _model_tables() -> set[str]:
    return set(migrations.target_metadata().tables)


# -- the shipped chain ------------------------------------------------------------------------
def test_the_chain_has_one_head_and_ships_with_the_package() -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1, (
        f"migration heads {heads}: two revisions share a parent. Renumber yours on top of the "
        "other (set its revision and down_revision) so the chain stays one line."
    )
    assert migrations.head_revision() == heads[0]
    assert (migrations.MIGRATIONS_DIR / "versions" / "__init__.py").exists()
    assert (migrations.MIGRATIONS_DIR / "script.py.mako").exists()
    package_data = (ROOT / "pyproject.toml").read_text()
    assert '"pizzashop.core.migrations" = ["script.py.mako"]' in package_data


def test_every_module_with_a_table_is_listed() -> None:
    """A table in a module ``target_metadata`` does not import would escape the compare test."""
    defining = set()
    for package in ("ingest", "services", "models", "enrichers", "api", "pizzashop"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts or not re.search(r"\bTable\(", path.read_text()):
                continue
            defining.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    missing = defining - set(migrations.TABLE_MODULES)
    assert not missing, f"add {sorted(missing)} to TABLE_MODULES in pizzashop/core/migrations"


async def test_upgrade_from_empty_builds_every_table(empty_url: str) -> None:
    assert await migrations.current_revision(empty_url) is None
    state = await migrations.upgrade(empty_url)
    assert state.current == migrations.head_revision() and state.at_head
    assert await migrations.current_revision(empty_url) == state.head
    tables = await _table_names(empty_url)
    assert {"alembic_version", "orders", "outbox", "processed_events"} <= tables
    again = await migrations.upgrade(empty_url)  # nothing left to do, and no error
    assert again.current == state.current


async def test_the_migrated_schema_matches_the_models(empty_url: str) -> None:
    """The guard: a table or column changed without a revision fails here."""
    await migrations.upgrade(empty_url)

    def diff(conn: Connection) -> list[object]:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "render_as_batch": True}
        )
        # alembic takes a sequence of MetaData as the target (env.py does too); its hint says one.
        target: Any = migrations.target_metadata()
        return list(compare_metadata(context, target))

    engine = create_async_engine(empty_url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == [], (
        "the models' tables and the migrations disagree:\n  "
        + "\n  ".join(map(str, differences))
        + "\n"
        + FIX
    )


# -- a later revision on a database with rows -------------------------------------------------
EXTRA_REVISION = """
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.add_column(
            sa.Column("note", sa.String(64), nullable=False, server_default="none")
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_column("note")
"""


@pytest.fixture
def extra_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The shipped chain plus a revision adding ``orders.note``, as the code's new head."""
    versions = tmp_path / "versions"
    versions.mkdir()
    shipped = migrations.MIGRATIONS_DIR / "versions"
    for path in shipped.glob("*.py"):
        (versions / path.name).write_text(path.read_text())
    head = migrations.head_revision()
    (versions / "9999_add_orders_note.py").write_text(EXTRA_REVISION.format(down=head))
    original = migrations.alembic_config

    def with_extra(url: str | None = None) -> Config:
        config = original(url)
        config.set_main_option("version_locations", str(versions))
        return config

    monkeypatch.setattr(migrations, "alembic_config", with_extra)
    return head


async def _add_order(url: str, order_id: str) -> None:
    engine = create_async_engine(url)
    row = {
        "order_id": order_id,
        "customer_id": "c-1",
        "total": 12,
        "currency": "USD",
        "placed_at": datetime(2026, 1, 1, tzinfo=UTC),
        "body": "{}",
    }
    try:
        async with engine.begin() as conn:
            columns = ", ".join(row)
            values = ", ".join(f":{k}" for k in row)
            await conn.execute(sa.text(f"INSERT INTO orders ({columns}) VALUES ({values})"), row)
    finally:
        await engine.dispose()


async def _orders(url: str) -> list[tuple[str, str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.text("SELECT order_id, note FROM orders ORDER BY 1"))
            return [(r[0], r[1]) for r in result]
    finally:
        await engine.dispose()


async def test_a_revision_adding_a_column_keeps_the_rows(
    empty_url: str, extra_revision: str
) -> None:
    await migrations.upgrade(empty_url, extra_revision)
    await _add_order(empty_url, "o-1")
    await _add_order(empty_url, "o-2")
    state = await migrations.upgrade(empty_url)
    assert state.current == "9999"
    assert await _orders(empty_url) == [("o-1", "none"), ("o-2", "none")]


async def test_start_refuses_an_older_revision_unless_auto_migrate(
    empty_url: str, extra_revision: str
) -> None:
    await migrations.upgrade(empty_url, extra_revision)
    await _add_order(empty_url, "o-1")
    expected = rf"revision {extra_revision}, the code at 9999.*pizzashop db upgrade"
    with pytest.raises(ConfigError, match=expected):
        await Database(empty_url, auto_migrate=False).start()
    assert await migrations.current_revision(empty_url) == extra_revision
    async with Database(empty_url, auto_migrate=True) as db:
        assert db.engine is not None
    assert await _orders(empty_url) == [("o-1", "none")]


def test_auto_migrate_defaults_on_for_sqlite_only() -> None:
    assert Database("sqlite+aiosqlite:///x.db").auto_migrate
    assert not Database("postgresql+asyncpg://u@h/db").auto_migrate
    assert Database("postgresql+asyncpg://u@h/db", auto_migrate=True).auto_migrate


# -- Database.start ---------------------------------------------------------------------------
async def test_start_builds_an_empty_database_even_without_auto_migrate(empty_url: str) -> None:
    async with Database(empty_url, auto_migrate=False):
        pass
    assert await migrations.current_revision(empty_url) == migrations.head_revision()
    assert _model_tables() <= await _table_names(empty_url)


async def _legacy(url: str) -> None:
    """A database as ``create_all`` made it before migrations: the baseline tables, one row."""
    script = ScriptDirectory.from_config(migrations.alembic_config())
    baseline = script.get_revision("0001")
    assert baseline is not None
    tables: sa.MetaData = baseline.module._baseline
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(tables.create_all)
    finally:
        await engine.dispose()
    await _add_order_without_note(url)


async def _add_order_without_note(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO orders (order_id, customer_id, total, currency, placed_at, body) "
                    "VALUES ('old-1', 'c-1', 5, 'USD', :at, '{}')"
                ),
                {"at": datetime(2025, 1, 1, tzinfo=UTC)},
            )
    finally:
        await engine.dispose()


async def test_start_adopts_a_database_made_before_migrations(empty_url: str) -> None:
    await _legacy(empty_url)
    state = await migrations.schema_state(empty_url)
    assert state.legacy and not state.empty
    with pytest.raises(ConfigError, match=r"made before migrations.*pizzashop db upgrade"):
        await Database(empty_url, auto_migrate=False).start()
    async with Database(empty_url, auto_migrate=True):
        pass
    assert await migrations.current_revision(empty_url) == migrations.head_revision()
    engine = create_async_engine(empty_url)
    try:
        async with engine.connect() as conn:
            kept = (await conn.execute(sa.text("SELECT order_id FROM orders"))).scalars().all()
    finally:
        await engine.dispose()
    assert kept == ["old-1"]


async def test_start_refuses_a_revision_it_does_not_know(empty_url: str) -> None:
    await migrations.upgrade(empty_url)
    engine = create_async_engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    finally:
        await engine.dispose()
    with pytest.raises(ConfigError, match="revision f00d, which this Pizzashop does not know"):
        await Database(empty_url, auto_migrate=True).start()


def test_revisions_run_only_through_the_package(tmp_path: Path) -> None:
    config = migrations.alembic_config(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(RuntimeError, match=r"through pizzashop\.core\.migrations"):
        command.upgrade(config, "head")
