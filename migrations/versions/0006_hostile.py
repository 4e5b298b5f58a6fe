"""per-subscriber revocation of mailed links: subscribers.tokens_revoked_at

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-06 04:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Links (unsubscribe, manage) signed before this moment are refused: the subscriber's token
    # generation, as a time, since every signed token carries the time it was signed.
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tokens_revoked_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_column("tokens_revoked_at")
