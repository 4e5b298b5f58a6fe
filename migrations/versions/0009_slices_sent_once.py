"""slices sent once: a slice's job takes it (status `sending`) and writes each mail's row once

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 13:00:00.000000

`fanout_slices.runs`: how many times a send job took the slice. A run after the first sends only
to who has no row yet, and reads receipts first (a mail of the run before may have gone out
just before its worker died). Slices written before the upgrade are pending or done: a pending
one is taken like a new one; rows a pre-0009 job left `sending` are the sweep's, as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "fanout_slices", sa.Column("runs", sa.Integer(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    # A slice taken by a 0009 job and not done goes back to pending: the older job writes its
    # rows and sends them (rows written since are left alone, ON CONFLICT).
    op.execute("UPDATE fanout_slices SET status = 'pending' WHERE status = 'sending'")
    op.drop_column("fanout_slices", "runs")
