"""item descriptions

Revision ID: a2e6f4d8b017
Revises: 5b8c0e2f6a93
"""

import sqlalchemy as sa
from alembic import op

revision = "a2e6f4d8b017"
down_revision = "5b8c0e2f6a93"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("description", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("items", "description")
