"""matching through the MeSH vocabulary: a condition's resolved descriptor, its required fact,
and the mesh index without `broad` (which no longer changes matching)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 12:00:00.000000

Existing condition subscriptions are resolved here as a signup now resolves them, so that they
keep matching (and now catch narrower studies): a typed one gets the descriptor its text means,
one made with a site's mesh_id keeps it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_MESH = "status = 'confirmed' AND paused = false AND mesh_id IS NOT NULL"
BATCH = 1000


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requires", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("resolved", json_type, nullable=True))
        batch_op.drop_index("ix_subscriptions_active_mesh")
        batch_op.create_index(
            "ix_subscriptions_active_mesh",
            ["mesh_id", "subscriber_id"],
            unique=False,
            postgresql_where=sa.text(ACTIVE_MESH),
            sqlite_where=sa.text(ACTIVE_MESH),
        )
    _resolve_existing()


def _resolve_existing() -> None:
    from notifier.core.concepts import concept_of  # the vocabulary, loaded only when run

    conn = op.get_bind()
    table = sa.table(
        "subscriptions",
        sa.column("id", sa.BigInteger()),
        sa.column("kind", sa.String()),
        sa.column("label", sa.String()),
        sa.column("mesh_id", sa.String()),
        sa.column("requires", sa.String()),
        sa.column("resolved", sa.JSON()),
    )
    last = 0
    while True:
        rows = conn.execute(
            sa.select(table.c.id, table.c.label, table.c.mesh_id)
            .where(table.c.kind == "condition", table.c.id > last)
            .order_by(table.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            concept = concept_of(row.label, row.mesh_id)
            conn.execute(
                sa.update(table)
                .where(table.c.id == row.id)
                .values(
                    mesh_id=concept.mesh_id,
                    requires=concept.requires,
                    resolved=concept.stored,
                )
            )
        last = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriptions_active_mesh")
        batch_op.create_index(
            "ix_subscriptions_active_mesh",
            ["mesh_id", "broad", "subscriber_id"],
            unique=False,
            postgresql_where=sa.text(ACTIVE_MESH),
            sqlite_where=sa.text(ACTIVE_MESH),
        )
        batch_op.drop_column("resolved")
        batch_op.drop_column("requires")
