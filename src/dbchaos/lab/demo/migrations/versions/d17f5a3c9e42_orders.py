"""orders and order lines

Revision ID: d17f5a3c9e42
Revises: 8a4d2b6e1c05
"""

import sqlalchemy as sa
from alembic import op

revision = "d17f5a3c9e42"
down_revision = "8a4d2b6e1c05"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("customer_id", sa.BigInteger, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="placed"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "order_lines",
        sa.Column("order_id", sa.BigInteger, sa.ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("item_id", sa.BigInteger, sa.ForeignKey("items.id"), primary_key=True),
        sa.Column("qty", sa.Integer, sa.CheckConstraint("qty > 0"), nullable=False),
        sa.Column("price_cents", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("order_lines")
    op.drop_table("orders")
