"""items

Revision ID: 8a4d2b6e1c05
Revises: 3c9e1f0a7b21
"""

import sqlalchemy as sa
from alembic import op

revision = "8a4d2b6e1c05"
down_revision = "3c9e1f0a7b21"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("sku", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("price_cents", sa.Integer, sa.CheckConstraint("price_cents >= 0"), nullable=False),
        sa.Column("stock", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("items")
