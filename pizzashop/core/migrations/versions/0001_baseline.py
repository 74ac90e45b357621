"""Baseline: every table as ``create_all`` made it before migrations.

Revision ID: 0001
Revises:
Create Date: 2026-12-02

The tables are spelled out here, not imported from the models: a revision is a frozen snapshot.

It also adopts a database made by ``create_all`` before migrations existed (no
``alembic_version`` table): tables that exist are kept if they have every column listed here,
missing ones are created. A table that lacks a column predates this baseline and is refused
rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pizzashop.core.errors import ConfigError

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_baseline = sa.MetaData()

sa.Table(
    "email_intents",
    _baseline,
    sa.Column("message_id", sa.String(length=64), nullable=False),
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("kind", sa.String(length=32), nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    ),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("message_id"),
    sa.Index("ix_email_intents_order_id", "order_id"),
)
sa.Table(
    "kitchen_tickets",
    _baseline,
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("placed_event_id", sa.String(length=64), nullable=True),
    sa.Column("ready_by", sa.DateTime(timezone=True), nullable=True),
    sa.Column("accepted", sa.Boolean(), nullable=False),
    sa.Column("rejected", sa.Boolean(), nullable=False),
    sa.Column("ready", sa.Boolean(), nullable=False),
    sa.Column("cancelled", sa.Boolean(), nullable=False),
    sa.Column("cancel_event_id", sa.String(length=64), nullable=True),
    sa.Column("cancel_reason", sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint("order_id"),
    sa.Index("ix_kitchen_tickets_ready_by", "ready_by"),
)
sa.Table(
    "order_scores",
    _baseline,
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("event_id", sa.String(length=64), nullable=False),
    sa.Column("customer_id", sa.String(length=64), nullable=False),
    sa.Column("enriched_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("fraud_probability", sa.Float(), nullable=True),
    sa.Column("fraud_model", sa.String(length=64), nullable=True),
    sa.Column("anomaly_percentile", sa.Float(), nullable=True),
    sa.Column("anomaly_model", sa.String(length=64), nullable=True),
    sa.Column("upsell_model", sa.String(length=64), nullable=True),
    sa.Column("degraded", sa.Boolean(), nullable=False),
    sa.Column("flagged", sa.Boolean(), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("order_id"),
    sa.Index("ix_order_scores_enriched_at", "enriched_at"),
    sa.Index("ix_order_scores_flagged", "flagged"),
)
sa.Table(
    "order_timeline",
    _baseline,
    sa.Column("event_id", sa.String(length=64), nullable=False),
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("event_type", sa.String(length=64), nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column(
        "recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    ),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("event_id"),
    sa.Index("ix_order_timeline_event_type", "event_type"),
    sa.Index("ix_order_timeline_order_id", "order_id"),
)
sa.Table(
    "orders",
    _baseline,
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("customer_id", sa.String(length=64), nullable=False),
    sa.Column("total", sa.Numeric(precision=12, scale=2), nullable=False),
    sa.Column("currency", sa.String(length=3), nullable=False),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("order_id"),
    sa.Index("ix_orders_customer_id", "customer_id"),
)
sa.Table(
    "outbox",
    _baseline,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        autoincrement=True,
        nullable=False,
    ),
    sa.Column("topic", sa.String(length=255), nullable=False),
    sa.Column("event_id", sa.String(length=64), nullable=False),
    sa.Column("key", sa.LargeBinary(), nullable=False),
    sa.Column("value", sa.LargeBinary(), nullable=False),
    sa.Column("headers", sa.Text(), nullable=False),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    ),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("event_id"),
    sa.Index("ix_outbox_sent_at", "sent_at"),
)
sa.Table(
    "outbox_lease",
    _baseline,
    sa.Column("name", sa.String(length=64), nullable=False),
    sa.Column("holder", sa.String(length=255), nullable=False),
    sa.Column("expires_at", sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint("name"),
)
sa.Table(
    "payments",
    _baseline,
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("placed_event_id", sa.String(length=64), nullable=True),
    sa.Column("amount", sa.Numeric(precision=12, scale=2), nullable=True),
    sa.Column("currency", sa.String(length=3), nullable=True),
    sa.Column("customer_email", sa.String(length=254), nullable=True),
    sa.Column("card_fingerprint", sa.String(length=64), nullable=True),
    sa.Column("captured", sa.Boolean(), nullable=False),
    sa.Column("refund_requested", sa.Boolean(), nullable=False),
    sa.Column("refund_reason", sa.String(length=200), nullable=True),
    sa.Column("failure_event_id", sa.String(length=64), nullable=True),
    sa.Column("refund_owner", sa.String(length=64), nullable=True),
    sa.Column("fulfilled", sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint("order_id"),
)
sa.Table(
    "processed_events",
    _baseline,
    sa.Column("consumer", sa.String(length=128), nullable=False),
    sa.Column("event_id", sa.String(length=64), nullable=False),
    sa.Column(
        "processed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    ),
    sa.PrimaryKeyConstraint("consumer", "event_id"),
)
sa.Table(
    "shadow_scores",
    _baseline,
    sa.Column("event_id", sa.String(length=64), nullable=False),
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("model", sa.String(length=64), nullable=False),
    sa.Column("champion_version", sa.Integer(), nullable=False),
    sa.Column("challenger_version", sa.Integer(), nullable=False),
    sa.Column("champion_score", sa.Float(), nullable=True),
    sa.Column("challenger_score", sa.Float(), nullable=True),
    sa.Column("difference", sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint("event_id"),
    sa.Index("ix_shadow_scores_order_id", "order_id"),
)
sa.Table(
    "feature_customers",
    _baseline,
    sa.Column("customer_id", sa.String(length=64), nullable=False),
    sa.Column("n_orders", sa.Integer(), nullable=False),
    sa.Column("spend", sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint("customer_id"),
)
sa.Table(
    "feature_entity_events",
    _baseline,
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("entity_id", sa.String(length=64), nullable=False),
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("ts", sa.Float(), nullable=False),
    sa.Column("total", sa.Float(), nullable=False),
    sa.Column("customer_id", sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint("kind", "entity_id", "order_id"),
    sa.Index("ix_feature_entity_events_key_ts", "kind", "entity_id", "ts"),
)
sa.Table(
    "feature_links",
    _baseline,
    sa.Column("customer_id", sa.String(length=64), nullable=False),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("value", sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint("customer_id", "kind", "value"),
)
sa.Table(
    "feature_orders",
    _baseline,
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("ts", sa.Float(), nullable=False),
    sa.Column("schema_version", sa.Integer(), nullable=False),
    sa.Column("features", sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint("order_id"),
)
sa.Table(
    "upsell_baskets",
    _baseline,
    sa.Column("order_id", sa.String(length=64), nullable=False),
    sa.Column("customer_id", sa.String(length=64), nullable=False),
    sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("skus", sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint("order_id"),
    sa.Index("ix_upsell_baskets_customer_id", "customer_id"),
)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    present = set(inspector.get_table_names())
    lacking: dict[str, list[str]] = {}
    for table in _baseline.sorted_tables:
        if table.name in present:
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            if missing := [c.name for c in table.columns if c.name not in columns]:
                lacking[table.name] = missing
    if lacking:
        raise ConfigError(
            "the database was made by an older Pizzashop, before migrations: "
            + "; ".join(f"table {t} lacks {', '.join(c)}" for t, c in lacking.items())
            + ". It cannot be upgraded: point PIZZASHOP_DATABASE_URL elsewhere or remove it."
        )
    for table in _baseline.sorted_tables:
        if table.name not in present:
            table.create(bind)  # with its indexes


def downgrade() -> None:
    for table in reversed(_baseline.sorted_tables):
        table.drop(op.get_bind())
