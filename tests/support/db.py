"""The databases the ``db`` fixture runs on: SQLite always, PostgreSQL when CI provides one."""

from __future__ import annotations

import os

import pytest

POSTGRES_URL = os.environ.get("PIZZASHOP_TEST_POSTGRES_URL")


def db_params() -> list[object]:
    """``sqlite``, and ``postgres`` skipped unless ``PIZZASHOP_TEST_POSTGRES_URL`` is set."""
    return [
        "sqlite",
        pytest.param(
            "postgres",
            marks=pytest.mark.skipif(
                POSTGRES_URL is None, reason="set PIZZASHOP_TEST_POSTGRES_URL (CI does)"
            ),
        ),
    ]
