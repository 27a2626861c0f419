"""orders remember the request that placed them

Lets a client that timed out find out whether its order was placed after all.

Revision ID: f0b3d7a1c864
Revises: a2e6f4d8b017
"""

import sqlalchemy as sa
from alembic import op

revision = "f0b3d7a1c864"
down_revision = "a2e6f4d8b017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("request_id", sa.Text, nullable=True))
    op.create_index("ix_orders_request_id", "orders", ["request_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_orders_request_id", table_name="orders")
    op.drop_column("orders", "request_id")
