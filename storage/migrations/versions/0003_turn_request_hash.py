"""turns.request_hash: the fingerprint of a keyed request, so a reused key is told from a retry

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 17:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"  # no branch labels, no dependencies


def upgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_column("request_hash")
