"""The server's schema: SQLAlchemy Core tables, one metadata for all of them.

Conventions:
- Ids come from ``AUTOINCREMENT`` on SQLite and an identity column on PostgreSQL,
  so an id is never reused, even after the newest rows are purged. Activity ids are
  the wire's ``operation-id`` and must stay unique forever.
- Times are UTC, stored without a zone (``UTCDateTime`` puts it back on read).
- Enumerated texts (states, kinds) are plain strings checked in Python by
  ``server.states``; the database does not duplicate that table.

Alembic migrations in ``server/migrations`` build exactly this metadata; a test
compares the two.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator):
    """A timezone-aware UTC datetime stored as a naive UTC ``DateTime``."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware times")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc)


def _id() -> sa.Column:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        sa.Identity(),
        primary_key=True,
    )


def _fk(name: str, target: str, *, nullable: bool = True, ondelete: str | None = None) -> sa.Column:
    return sa.Column(
        name,
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        sa.ForeignKey(target, ondelete=ondelete),
        nullable=nullable,
    )


# Installation-wide values (the server uuid, ...), written once.
server_settings = sa.Table(
    "server_settings",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

computers = sa.Table(
    "computers",
    metadata,
    _id(),  # also the wire's insecure id
    # sha256 hex of the secure id; NULL once the computer is removed (revoked).
    sa.Column("secure_id_hash", sa.String(64), nullable=True, unique=True),
    sa.Column("status", sa.String(16), nullable=False),  # pending | accepted
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("hostname", sa.Text, nullable=False, server_default=""),
    sa.Column("account_name", sa.String(200), nullable=False),
    sa.Column("access_group", sa.Text, nullable=True),
    sa.Column("vm_info", sa.Text, nullable=False, server_default=""),
    sa.Column("container_info", sa.Text, nullable=False, server_default=""),
    sa.Column("machine_id", sa.Text, nullable=True),
    sa.Column("ubuntu_pro_info", sa.Text, nullable=True),
    _fk("clone_of_id", "computers.id"),
    sa.Column("registered_at", UTCDateTime, nullable=False),
    sa.Column("accepted_at", UTCDateTime, nullable=True),
    sa.Column("removed_at", UTCDateTime, nullable=True),
    sa.Column("last_seen", UTCDateTime, nullable=True),
    # --- message-system state ---
    # sha256 hex of the exchange token the computer must present next (NULL: none issued).
    sa.Column("exchange_token_hash", sa.String(64), nullable=True),
    # Next client->server message number the server expects.
    sa.Column("client_sequence", sa.BigInteger, nullable=False, server_default="0"),
    # Number the next server->client message will get (outbox numbering).
    sa.Column("server_sequence", sa.BigInteger, nullable=False, server_default="0"),
    # What the agent last told us it handles (sorted, ';'-joined) and its md5 hex.
    sa.Column("client_accepted_types", sa.Text, nullable=False, server_default=""),
    sa.Column("client_accepted_types_hash", sa.String(32), nullable=True),
    sa.Column("client_api", sa.String(16), nullable=True),
    sqlite_autoincrement=True,
)

computer_tags = sa.Table(
    "computer_tags",
    metadata,
    _fk("computer_id", "computers.id", nullable=False, ondelete="CASCADE"),
    sa.Column("tag", sa.String(200), nullable=False),
    sa.PrimaryKeyConstraint("computer_id", "tag"),
    sa.Index(None, "tag"),
)

activities = sa.Table(
    "activities",
    metadata,
    _id(),  # also the wire's operation-id for client activities
    sa.Column("kind", sa.String(8), nullable=False),  # client | server
    sa.Column("type", sa.String(200), nullable=False),
    sa.Column("summary", sa.Text, nullable=False, server_default=""),
    sa.Column("creator", sa.String(200), nullable=False),
    _fk("computer_id", "computers.id"),
    _fk("parent_id", "activities.id"),
    _fk("origin_id", "activities.id"),
    sa.Column("is_group", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("blocked_reason", sa.String(16), nullable=True),  # approval | paused | held
    # A client activity canceled while in progress: canceled, but the agent's
    # result may still replace it (see server.states).
    sa.Column("cancel_provisional", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("approved_at", UTCDateTime, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.Column("modified_at", UTCDateTime, nullable=False),
    sa.Column("deliver_after", UTCDateTime, nullable=True),  # includes deliver_delay
    sa.Column("deliver_before", UTCDateTime, nullable=True),
    sa.Column("deliver_delay_window", sa.Integer, nullable=True),
    sa.Column("deliver_delay", sa.Float, nullable=True),  # this child's offset in the window
    sa.Column("requires_approval", sa.Boolean, nullable=False, server_default=sa.false()),
    _fk("wait_for_id", "activities.id"),
    sa.Column("wait_for_threshold", sa.Integer, nullable=True),
    sa.Column("result_code", sa.Integer, nullable=True),
    sa.Column("result_text", sa.Text, nullable=True),
    sa.Column("progress", sa.Integer, nullable=False, server_default="0"),
    # Client: when an in-progress activity without an answer ends failed/no-answer.
    sa.Column("answer_deadline", UTCDateTime, nullable=True),
    # Server activities: queue and job-handler bookkeeping.
    sa.Column("published_at", UTCDateTime, nullable=True),
    sa.Column("claimed_by", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
    # Group parents: number of children in each state, kept in the same
    # transaction as every child's change (row-locked increments), so the
    # parent's state is derived without counting children.
    sa.Column("children_count", sa.Integer, nullable=False, server_default="0"),
    *[
        sa.Column(f"n_{s.replace('-', '_')}", sa.Integer, nullable=False, server_default="0")
        for s in ("queued", "scheduled", "waiting", "blocked", "in-progress", "failed", "canceled", "succeeded")
    ],
    # The exchange: deliverable client work of one computer.
    sa.Index(None, "computer_id", "state"),
    sa.Index(None, "parent_id", "state"),
    sa.Index(None, "wait_for_id"),
    # The scheduler's due-time scans (see server.scheduler).
    sa.Index(None, "state", "deliver_after"),
    sa.Index(None, "state", "deliver_before"),
    sa.Index(None, "state", "answer_deadline"),
    sa.Index(None, "state", "lease_expires_at"),
    sa.Index(None, "created_at"),
    sqlite_autoincrement=True,
)

# Append-only: every transition and notable event of an activity.
activity_history = sa.Table(
    "activity_history",
    metadata,
    _id(),
    _fk("activity_id", "activities.id", nullable=False, ondelete="CASCADE"),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("event", sa.String(32), nullable=False),  # "transition" or an event name
    sa.Column("from_state", sa.String(16), nullable=True),
    sa.Column("to_state", sa.String(16), nullable=True),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    _fk("computer_id", "computers.id"),  # denormalised for the events listing
    sa.Index(None, "activity_id", "id"),
    sa.Index(None, "at"),
    sa.Index(None, "computer_id", "at"),
    sqlite_autoincrement=True,
)

# Server->client messages of each computer, numbered, kept until acknowledged.
outbox = sa.Table(
    "outbox",
    metadata,
    _id(),
    _fk("computer_id", "computers.id", nullable=False, ondelete="CASCADE"),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("message", sa.LargeBinary, nullable=False),  # bpickle of one message
    _fk("activity_id", "activities.id", ondelete="SET NULL"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("computer_id", "sequence"),
    sqlite_autoincrement=True,
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    _id(),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sqlite_autoincrement=True,
)

attachments = sa.Table(
    "attachments",
    metadata,
    _id(),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("creator", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sqlite_autoincrement=True,
)

# Which attachments an activity uses: a computer may fetch an attachment only
# through an activity delivered to it.
activity_attachments = sa.Table(
    "activity_attachments",
    metadata,
    _fk("activity_id", "activities.id", nullable=False, ondelete="CASCADE"),
    _fk("attachment_id", "attachments.id", nullable=False),
    sa.PrimaryKeyConstraint("activity_id", "attachment_id"),
    sa.Index(None, "attachment_id"),
)

# The `db` queue: one row per published server activity until acknowledged.
job_queue = sa.Table(
    "job_queue",
    metadata,
    _id(),
    _fk("activity_id", "activities.id", nullable=False, ondelete="CASCADE"),
    sa.Column("enqueued_at", UTCDateTime, nullable=False),
    sa.Column("claimed_by", sa.String(200), nullable=True),
    sa.Column("claim_expires_at", UTCDateTime, nullable=True),
    sa.Index(None, "claimed_by", "id"),
    sqlite_autoincrement=True,
)

# Output of server activities (reports...), in the database so any server serves it.
job_outputs = sa.Table(
    "job_outputs",
    metadata,
    _fk("activity_id", "activities.id", nullable=False, ondelete="CASCADE"),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("content_type", sa.String(200), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("activity_id", "name"),
)
