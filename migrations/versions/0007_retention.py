"""retention: deliveries partitioned by event on PostgreSQL, per-event counts of purged rows

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 07:00:00.000000

PostgreSQL: `deliveries` becomes a table partitioned by RANGE (event_pk). The existing table is
not copied: it is attached as the first partition (all events so far), after a CHECK proves its
bound, so the upgrade costs one scan and one index build, not a rewrite. A partitioned table's
keys must include the partition key: its primary key is (id, event_pk); UNIQUE (event_pk,
subscriber_id) already does. A second partition takes the events to come; the worker's
retention cron rolls to a new one daily and drops old ones (notifier.data.partitions).

Both dialects: `event_delivery_counts` (a purged event's rows by status) and two timestamps on
`events` (rows compacted, payload purged).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_PAYLOAD_DUE = sa.text("compacted_at IS NOT NULL AND payload_purged_at IS NULL")
# Event ids a partition spans (notifier.data.partitions.SPAN, repeated: a migration is frozen).
SPAN = 10**9

_COLUMNS = """
    id BIGINT NOT NULL DEFAULT nextval('deliveries_id_seq'),
    event_pk BIGINT NOT NULL,
    subscriber_id BIGINT NOT NULL,
    status VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TIMESTAMP WITH TIME ZONE NOT NULL,
    last_error VARCHAR(500),
    message_id VARCHAR(255),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    sent_at TIMESTAMP WITH TIME ZONE
"""

_KEYS = [
    "ALTER TABLE deliveries ADD CONSTRAINT fk_deliveries_event_pk_events"
    " FOREIGN KEY (event_pk) REFERENCES events (id) ON DELETE CASCADE",
    "ALTER TABLE deliveries ADD CONSTRAINT fk_deliveries_subscriber_id_subscribers"
    " FOREIGN KEY (subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE",
    "ALTER TABLE deliveries ADD CONSTRAINT uq_deliveries_event_pk_subscriber_id"
    " UNIQUE (event_pk, subscriber_id)",
    "CREATE INDEX ix_deliveries_status_next_attempt_at ON deliveries (status, next_attempt_at)",
    "CREATE INDEX ix_deliveries_subscriber_id_status ON deliveries (subscriber_id, status)",
]

# The names the plain table's constraints and indexes had, as the attached partition keeps them.
_OLD_NAMES = [
    ("CONSTRAINT", "uq_deliveries_event_pk_subscriber_id"),
    ("CONSTRAINT", "fk_deliveries_event_pk_events"),
    ("CONSTRAINT", "fk_deliveries_subscriber_id_subscribers"),
    ("INDEX", "ix_deliveries_status_next_attempt_at"),
    ("INDEX", "ix_deliveries_subscriber_id_status"),
]


def _partition_postgres() -> None:
    bind = op.get_bind()
    first = int(bind.scalar(sa.text("SELECT coalesce(max(id), 0) + 1 FROM events")))
    op.execute("ALTER TABLE deliveries RENAME TO deliveries_e0")
    for kind, name in _OLD_NAMES:
        new = name.replace("deliveries", "deliveries_e0", 1)
        if kind == "INDEX":
            op.execute(f"ALTER INDEX {name} RENAME TO {new}")
        else:
            op.execute(f"ALTER TABLE deliveries_e0 RENAME CONSTRAINT {name} TO {new}")
    op.execute("ALTER TABLE deliveries_e0 DROP CONSTRAINT pk_deliveries")
    op.execute("ALTER TABLE deliveries_e0 ALTER COLUMN id DROP DEFAULT")
    op.execute(f"CREATE TABLE deliveries ({_COLUMNS}) PARTITION BY RANGE (event_pk)")
    op.execute("ALTER SEQUENCE deliveries_id_seq OWNED BY deliveries.id")
    op.execute("ALTER TABLE deliveries ADD CONSTRAINT pk_deliveries PRIMARY KEY (id, event_pk)")
    for statement in _KEYS:
        op.execute(statement)
    # A valid CHECK that implies the bound: ATTACH then skips its own scan of the rows.
    op.execute(
        f"ALTER TABLE deliveries_e0 ADD CONSTRAINT deliveries_e0_bound CHECK (event_pk < {first})"
    )
    op.execute(
        "ALTER TABLE deliveries ATTACH PARTITION deliveries_e0"
        f" FOR VALUES FROM (MINVALUE) TO ({first})"
    )
    op.execute("ALTER TABLE deliveries_e0 DROP CONSTRAINT deliveries_e0_bound")
    op.execute(
        f"CREATE TABLE deliveries_e{first} PARTITION OF deliveries"
        f" FOR VALUES FROM ({first}) TO ({first + SPAN})"
    )


def _unpartition_postgres() -> None:
    op.execute("ALTER TABLE deliveries RENAME TO deliveries_partitioned")
    op.execute(f"CREATE TABLE deliveries ({_COLUMNS})")
    op.execute("INSERT INTO deliveries SELECT * FROM deliveries_partitioned")
    op.execute("ALTER SEQUENCE deliveries_id_seq OWNED BY deliveries.id")
    op.execute("DROP TABLE deliveries_partitioned")  # and its partitions
    op.execute("ALTER TABLE deliveries ADD CONSTRAINT pk_deliveries PRIMARY KEY (id)")
    for statement in _KEYS:
        op.execute(statement)


def upgrade() -> None:
    op.create_table(
        "event_delivery_counts",
        sa.Column("event_pk", BIG_ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_pk"],
            ["events.id"],
            name=op.f("fk_event_delivery_counts_event_pk_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("event_pk", "status", name=op.f("pk_event_delivery_counts")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("compacted_at", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("payload_purged_at", sa.DateTime(timezone=True)))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_events_payload_due",
            ["fanned_out_at"],
            unique=False,
            postgresql_where=_PAYLOAD_DUE,
            sqlite_where=_PAYLOAD_DUE,
        )
    with op.batch_alter_table("study_versions", schema=None) as batch_op:
        batch_op.create_index("ix_study_versions_stored_at_id", ["stored_at", "id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        _partition_postgres()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _unpartition_postgres()
    op.execute("DROP INDEX ix_study_versions_stored_at_id")
    op.execute("DROP INDEX ix_events_payload_due")
    # Not batch mode: on SQLite it rebuilds `events`, and dropping the old table with foreign
    # keys on deletes every delivery row (ON DELETE CASCADE). SQLite >= 3.35 drops a column.
    op.execute("ALTER TABLE events DROP COLUMN payload_purged_at")
    op.execute("ALTER TABLE events DROP COLUMN compacted_at")
    op.drop_table("event_delivery_counts")
