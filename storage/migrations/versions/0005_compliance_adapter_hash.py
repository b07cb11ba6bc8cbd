"""compliance_decisions.adapter_hash: the tuned LoRA adapter behind each LLM draft"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("compliance_decisions") as batch_op:
        batch_op.add_column(sa.Column("adapter_hash", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("compliance_decisions") as batch_op:
        batch_op.drop_column("adapter_hash")
