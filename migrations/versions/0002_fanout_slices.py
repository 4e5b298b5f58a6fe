"""fan-out slices: one durable row per send batch instead of a delivery row per recipient up front

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 03:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fanout_slices",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("after_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_pk"],
            ["events.id"],
            name=op.f("fk_fanout_slices_event_pk_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fanout_slices")),
    )
    with op.batch_alter_table("fanout_slices", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fanout_slices_event_pk_status", ["event_pk", "status"], unique=False
        )
        batch_op.create_index(
            "ix_fanout_slices_status_queued_at", ["status", "queued_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("fanout_slices", schema=None) as batch_op:
        batch_op.drop_index("ix_fanout_slices_status_queued_at")
        batch_op.drop_index("ix_fanout_slices_event_pk_status")
    op.drop_table("fanout_slices")
