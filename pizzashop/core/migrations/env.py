"""Alembic's environment: runs on the connection handed in by ``pizzashop.core.migrations``.

Batch mode renders ALTERs as SQLite needs them (copy and swap the table); on PostgreSQL the same
operations run as plain ALTER TABLE.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from pizzashop.core.migrations import target_metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        render_as_batch=True,
        compare_type=True,
        compare_server_default=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations through pizzashop.core.migrations (pizzashop db upgrade / db revision)"
        )
    _run(connection)


_main()
