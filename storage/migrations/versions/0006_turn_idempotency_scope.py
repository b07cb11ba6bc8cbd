"""turns.idempotency_scope: whose Idempotency-Key a turn was written under"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    # A key names one request of one client. The scope (the HTTP service stores the API key's
    # name) lets the engine tell a key reused on another session from a new turn.
    with op.batch_alter_table("turns") as batch_op:
        batch_op.add_column(sa.Column("idempotency_scope", sa.String(length=200), nullable=True))
        batch_op.create_index(
            "ix_turns_idempotency_scope_key", ["idempotency_scope", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch_op:
        batch_op.drop_index("ix_turns_idempotency_scope_key")
        batch_op.drop_column("idempotency_scope")
