"""create accounts"""

import sqlalchemy as sa
from alembic import op

revision = "a1c3e5f70001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "accounts", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text, nullable=False)
    )
