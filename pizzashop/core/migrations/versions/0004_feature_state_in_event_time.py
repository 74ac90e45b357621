"""feature state in event time: the aggregates hold only what was folded out of the ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 16:00:00.000000

Before, ``feature_customers`` and ``feature_links`` counted every order and
``feature_entity_events`` kept every order besides (never pruned); now the rows are the ledger,
replayed in event time, and the aggregates hold only the orders a prune folded out of it. So
the upgrade takes the rows' share out of the aggregates, and the downgrade puts it back. The
derived "novel" rows are no longer stored (the replay derives them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROWS = "feature_entity_events"


def upgrade() -> None:
    op.create_index("ix_feature_entity_events_customer", _ROWS, ["customer_id"], unique=False)
    op.create_index("ix_feature_entity_events_ts", _ROWS, ["ts"], unique=False)
    op.execute(sa.text(f"DELETE FROM {_ROWS} WHERE kind = 'novel'"))
    op.execute(
        sa.text(
            "UPDATE feature_customers SET "
            f"n_orders = n_orders - (SELECT count(*) FROM {_ROWS} e WHERE e.kind = 'customer' "
            "AND e.entity_id = feature_customers.customer_id), "
            f"spend = spend - (SELECT coalesce(sum(e.total), 0) FROM {_ROWS} e "
            "WHERE e.kind = 'customer' AND e.entity_id = feature_customers.customer_id)"
        )
    )
    op.execute(sa.text("DELETE FROM feature_customers WHERE n_orders <= 0"))
    op.execute(
        sa.text(
            f"DELETE FROM feature_links WHERE EXISTS (SELECT 1 FROM {_ROWS} e "
            "WHERE e.kind = feature_links.kind AND e.entity_id = feature_links.value "
            "AND e.customer_id = feature_links.customer_id)"
        )
    )


def downgrade() -> None:
    op.execute(
        sa.text(
            "INSERT INTO feature_customers (customer_id, n_orders, spend) "
            f"SELECT entity_id, count(*), sum(total) FROM {_ROWS} WHERE kind = 'customer' "
            "GROUP BY entity_id "
            "ON CONFLICT (customer_id) DO UPDATE SET "
            "n_orders = feature_customers.n_orders + excluded.n_orders, "
            "spend = feature_customers.spend + excluded.spend"
        )
    )
    op.execute(
        sa.text(
            "INSERT INTO feature_links (customer_id, kind, value) "
            f"SELECT DISTINCT customer_id, kind, entity_id FROM {_ROWS} "
            "WHERE kind IN ('card', 'device', 'address') ON CONFLICT DO NOTHING"
        )
    )
    op.drop_index("ix_feature_entity_events_ts", table_name=_ROWS)
    op.drop_index("ix_feature_entity_events_customer", table_name=_ROWS)
