"""Initial schema: every table of server.db.tables as first written.

SQLite gets AUTOINCREMENT and PostgreSQL identity columns, so ids are never reused.
Times are naive UTC DateTime columns (server.db.tables.UTCDateTime adds the zone in
Python).

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.Column('last_used_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash')),
    sa.UniqueConstraint('name', name=op.f('uq_api_keys_name')),
    sqlite_autoincrement=True
    )
    op.create_table('attachments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('creator', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attachments')),
    sqlite_autoincrement=True
    )
    op.create_table('computers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('secure_id_hash', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('hostname', sa.Text(), server_default='', nullable=False),
    sa.Column('account_name', sa.String(length=200), nullable=False),
    sa.Column('access_group', sa.Text(), nullable=True),
    sa.Column('vm_info', sa.Text(), server_default='', nullable=False),
    sa.Column('container_info', sa.Text(), server_default='', nullable=False),
    sa.Column('machine_id', sa.Text(), nullable=True),
    sa.Column('ubuntu_pro_info', sa.Text(), nullable=True),
    sa.Column('clone_of_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('registered_at', sa.DateTime(), nullable=False),
    sa.Column('accepted_at', sa.DateTime(), nullable=True),
    sa.Column('removed_at', sa.DateTime(), nullable=True),
    sa.Column('last_seen', sa.DateTime(), nullable=True),
    sa.Column('exchange_token_hash', sa.String(length=64), nullable=True),
    sa.Column('client_sequence', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('server_sequence', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('client_accepted_types', sa.Text(), server_default='', nullable=False),
    sa.Column('client_accepted_types_hash', sa.String(length=32), nullable=True),
    sa.Column('client_api', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['clone_of_id'], ['computers.id'], name=op.f('fk_computers_clone_of_id_computers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_computers')),
    sa.UniqueConstraint('secure_id_hash', name=op.f('uq_computers_secure_id_hash')),
    sqlite_autoincrement=True
    )
    op.create_table('server_settings',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_server_settings'))
    )
    op.create_table('activities',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('type', sa.String(length=200), nullable=False),
    sa.Column('summary', sa.Text(), server_default='', nullable=False),
    sa.Column('creator', sa.String(length=200), nullable=False),
    sa.Column('computer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('origin_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('is_group', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('blocked_reason', sa.String(length=16), nullable=True),
    sa.Column('cancel_provisional', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('approved_at', sa.DateTime(), nullable=True),
    sa.Column('delivered_at', sa.DateTime(), nullable=True),
    sa.Column('completed_at', sa.DateTime(), nullable=True),
    sa.Column('modified_at', sa.DateTime(), nullable=False),
    sa.Column('deliver_after', sa.DateTime(), nullable=True),
    sa.Column('deliver_before', sa.DateTime(), nullable=True),
    sa.Column('deliver_delay_window', sa.Integer(), nullable=True),
    sa.Column('deliver_delay', sa.Float(), nullable=True),
    sa.Column('requires_approval', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('wait_for_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('wait_for_threshold', sa.Integer(), nullable=True),
    sa.Column('result_code', sa.Integer(), nullable=True),
    sa.Column('result_text', sa.Text(), nullable=True),
    sa.Column('progress', sa.Integer(), server_default='0', nullable=False),
    sa.Column('answer_deadline', sa.DateTime(), nullable=True),
    sa.Column('published_at', sa.DateTime(), nullable=True),
    sa.Column('claimed_by', sa.String(length=200), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(), nullable=True),
    sa.Column('retry_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('children_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_queued', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_scheduled', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_waiting', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_blocked', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_in_progress', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_failed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_canceled', sa.Integer(), server_default='0', nullable=False),
    sa.Column('n_succeeded', sa.Integer(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['computer_id'], ['computers.id'], name=op.f('fk_activities_computer_id_computers')),
    sa.ForeignKeyConstraint(['origin_id'], ['activities.id'], name=op.f('fk_activities_origin_id_activities')),
    sa.ForeignKeyConstraint(['parent_id'], ['activities.id'], name=op.f('fk_activities_parent_id_activities')),
    sa.ForeignKeyConstraint(['wait_for_id'], ['activities.id'], name=op.f('fk_activities_wait_for_id_activities')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activities')),
    sqlite_autoincrement=True
    )
    op.create_index(op.f('ix_activities_computer_id_state'), 'activities', ['computer_id', 'state'])
    op.create_index(op.f('ix_activities_created_at'), 'activities', ['created_at'])
    op.create_index(op.f('ix_activities_parent_id_state'), 'activities', ['parent_id', 'state'])
    op.create_index(op.f('ix_activities_state_answer_deadline'), 'activities', ['state', 'answer_deadline'])
    op.create_index(op.f('ix_activities_state_deliver_after'), 'activities', ['state', 'deliver_after'])
    op.create_index(op.f('ix_activities_state_deliver_before'), 'activities', ['state', 'deliver_before'])
    op.create_index(op.f('ix_activities_state_lease_expires_at'), 'activities', ['state', 'lease_expires_at'])
    op.create_index(op.f('ix_activities_wait_for_id'), 'activities', ['wait_for_id'])
    op.create_table('computer_tags',
    sa.Column('computer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('tag', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['computer_id'], ['computers.id'], name=op.f('fk_computer_tags_computer_id_computers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('computer_id', 'tag', name=op.f('pk_computer_tags'))
    )
    op.create_index(op.f('ix_computer_tags_tag'), 'computer_tags', ['tag'])
    op.create_table('activity_attachments',
    sa.Column('activity_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attachment_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['activity_id'], ['activities.id'], name=op.f('fk_activity_attachments_activity_id_activities'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['attachment_id'], ['attachments.id'], name=op.f('fk_activity_attachments_attachment_id_attachments')),
    sa.PrimaryKeyConstraint('activity_id', 'attachment_id', name=op.f('pk_activity_attachments'))
    )
    op.create_index(op.f('ix_activity_attachments_attachment_id'), 'activity_attachments', ['attachment_id'])
    op.create_table('activity_history',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('activity_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=True),
    sa.Column('to_state', sa.String(length=16), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('computer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.ForeignKeyConstraint(['activity_id'], ['activities.id'], name=op.f('fk_activity_history_activity_id_activities'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['computer_id'], ['computers.id'], name=op.f('fk_activity_history_computer_id_computers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activity_history')),
    sqlite_autoincrement=True
    )
    op.create_index(op.f('ix_activity_history_activity_id_id'), 'activity_history', ['activity_id', 'id'])
    op.create_index(op.f('ix_activity_history_at'), 'activity_history', ['at'])
    op.create_index(op.f('ix_activity_history_computer_id_at'), 'activity_history', ['computer_id', 'at'])
    op.create_table('job_outputs',
    sa.Column('activity_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('content_type', sa.String(length=200), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['activity_id'], ['activities.id'], name=op.f('fk_job_outputs_activity_id_activities'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('activity_id', 'name', name=op.f('pk_job_outputs'))
    )
    op.create_table('job_queue',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('activity_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(), nullable=False),
    sa.Column('claimed_by', sa.String(length=200), nullable=True),
    sa.Column('claim_expires_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['activity_id'], ['activities.id'], name=op.f('fk_job_queue_activity_id_activities'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_queue')),
    sqlite_autoincrement=True
    )
    op.create_index(op.f('ix_job_queue_claimed_by_id'), 'job_queue', ['claimed_by', 'id'])
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), sa.Identity(always=False), nullable=False),
    sa.Column('computer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('message', sa.LargeBinary(), nullable=False),
    sa.Column('activity_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['activity_id'], ['activities.id'], name=op.f('fk_outbox_activity_id_activities'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['computer_id'], ['computers.id'], name=op.f('fk_outbox_computer_id_computers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox')),
    sa.UniqueConstraint('computer_id', 'sequence', name=op.f('uq_outbox_computer_id_sequence')),
    sqlite_autoincrement=True
    )


def downgrade() -> None:
    op.drop_table('outbox')
    op.drop_index(op.f('ix_job_queue_claimed_by_id'), table_name='job_queue')
    op.drop_table('job_queue')
    op.drop_table('job_outputs')
    op.drop_index(op.f('ix_activity_history_computer_id_at'), table_name='activity_history')
    op.drop_index(op.f('ix_activity_history_at'), table_name='activity_history')
    op.drop_index(op.f('ix_activity_history_activity_id_id'), table_name='activity_history')
    op.drop_table('activity_history')
    op.drop_index(op.f('ix_activity_attachments_attachment_id'), table_name='activity_attachments')
    op.drop_table('activity_attachments')
    op.drop_index(op.f('ix_computer_tags_tag'), table_name='computer_tags')
    op.drop_table('computer_tags')
    op.drop_index(op.f('ix_activities_wait_for_id'), table_name='activities')
    op.drop_index(op.f('ix_activities_state_lease_expires_at'), table_name='activities')
    op.drop_index(op.f('ix_activities_state_deliver_before'), table_name='activities')
    op.drop_index(op.f('ix_activities_state_deliver_after'), table_name='activities')
    op.drop_index(op.f('ix_activities_state_answer_deadline'), table_name='activities')
    op.drop_index(op.f('ix_activities_parent_id_state'), table_name='activities')
    op.drop_index(op.f('ix_activities_created_at'), table_name='activities')
    op.drop_index(op.f('ix_activities_computer_id_state'), table_name='activities')
    op.drop_table('activities')
    op.drop_table('server_settings')
    op.drop_table('computers')
    op.drop_table('attachments')
    op.drop_table('api_keys')
