"""create invoices"""

import sqlalchemy as sa
from alembic import op

revision = "b2d4f6081002"
down_revision = "a1c3e5f70001"


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("amount", sa.Numeric(10, 2), nullable=False),
    )
