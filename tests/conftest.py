"""Fixtures of both tiers: a real database (SQLite, and PostgreSQL when CI provides one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# The shared cases and helpers assert too: rewrite them as pytest rewrites test modules.
pytest.register_assert_rewrite("tests.support")

from pizzashop.core.database import Database, metadata  # noqa: E402
from tests.support.db import POSTGRES_URL, db_params  # noqa: E402


@pytest.fixture(params=db_params())
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    else:
        assert POSTGRES_URL is not None
        url = POSTGRES_URL
    async with Database(url) as database:
        if request.param == "postgres":
            # One database for the whole run: start each test from empty tables.
            async with database.engine.begin() as conn:
                for table in reversed(metadata.sorted_tables):
                    await conn.execute(table.delete())
        yield database
