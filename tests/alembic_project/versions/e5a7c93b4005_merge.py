"""merge branches A and B, create payments"""

import sqlalchemy as sa
from alembic import op

revision = "e5a7c93b4005"
down_revision = ("c3e5a7192003", "d4f6b82a3004")


def upgrade() -> None:
    op.create_table(
        "payments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("invoice_id", sa.Integer, sa.ForeignKey("invoices.id"), nullable=False),
    )
