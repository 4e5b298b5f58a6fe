"""studies: the catalogue, record versions (snapshots), sites, and the sync cursor

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-27 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("nct_id", sa.String(length=11), nullable=False),
        sa.Column("brief_title", sa.Text(), nullable=False),
        sa.Column("short_title", sa.Text(), nullable=True),
        sa.Column("overall_status", sa.String(length=40), nullable=True),
        sa.Column("why_stopped", sa.Text(), nullable=True),
        sa.Column("conditions", JSON, nullable=False),
        sa.Column("condition_mesh", JSON, nullable=False),
        sa.Column("first_posted", sa.String(length=10), nullable=True),
        sa.Column("last_update_posted", sa.String(length=10), nullable=True),
        sa.Column("version_key", sa.String(length=40), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("versions", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nct_id", name=op.f("pk_studies")),
    )
    op.create_table(
        "study_versions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("nct_id", sa.String(length=11), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("version_key", sa.String(length=40), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["nct_id"],
            ["studies.nct_id"],
            name=op.f("fk_study_versions_nct_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_versions")),
        sa.UniqueConstraint("nct_id", "seq", name=op.f("uq_study_versions_nct_id_seq")),
    )
    op.create_table(
        "study_sites",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("nct_id", sa.String(length=11), nullable=False),
        sa.Column("facility", sa.Text(), nullable=True),
        sa.Column("city", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("zip", sa.Text(), nullable=True),
        sa.Column("country", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=40), nullable=True),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["nct_id"],
            ["studies.nct_id"],
            name=op.f("fk_study_sites_nct_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_study_sites")),
    )
    with op.batch_alter_table("study_sites", schema=None) as batch_op:
        batch_op.create_index(
            "ix_study_sites_latitude_longitude", ["latitude", "longitude"], unique=False
        )
        batch_op.create_index("ix_study_sites_nct_id", ["nct_id"], unique=False)
    op.create_table(
        "sync_state",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("cursor", sa.String(length=10), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run", JSON, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sync_state")),
    )


def downgrade() -> None:
    op.drop_table("sync_state")
    with op.batch_alter_table("study_sites", schema=None) as batch_op:
        batch_op.drop_index("ix_study_sites_nct_id")
        batch_op.drop_index("ix_study_sites_latitude_longitude")
    op.drop_table("study_sites")
    op.drop_table("study_versions")
    op.drop_table("studies")
