"""index orders by customer

Revision ID: 5b8c0e2f6a93
Revises: d17f5a3c9e42
"""

from alembic import op

revision = "5b8c0e2f6a93"
down_revision = "d17f5a3c9e42"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_orders_customer_id", "orders", ["customer_id"])


def downgrade() -> None:
    op.drop_index("ix_orders_customer_id", table_name="orders")
