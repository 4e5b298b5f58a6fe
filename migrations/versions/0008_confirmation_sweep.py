"""confirmation sweep: when a confirmation job last ran for a subscriber

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 12:30:00.000000

`subscribers.confirm_job_at`: set by the confirmation job when it runs. A signup whose job was
lost (enqueued on a Redis master that died before it replicated) has a pending subscription
requested after it: the sweep enqueues the job again (notifier.jobs.sweep). Addresses that
exist at the upgrade get the upgrade's time: their confirmation jobs ran under the previous
version (or were lost before it, and are not sent days later).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both dialects (SQLite >= 3.35 drops a column in place): a batch
# operation would copy `subscribers` on SQLite, and dropping the old copy cascades to every
# delivery (their foreign key is ON DELETE CASCADE).


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("confirm_job_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE subscribers SET confirm_job_at = CURRENT_TIMESTAMP")


def downgrade() -> None:
    op.drop_column("subscribers", "confirm_job_at")
