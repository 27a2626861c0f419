"""create refunds (head)"""

import sqlalchemy as sa
from alembic import op

revision = "f6b8da4c5006"
down_revision = "e5a7c93b4005"


def upgrade() -> None:
    op.create_table(
        "refunds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("payment_id", sa.Integer, sa.ForeignKey("payments.id"), nullable=False),
        sa.Column("reason", sa.Text),
    )
