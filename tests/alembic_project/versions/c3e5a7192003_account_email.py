"""branch A: add accounts.email"""

import sqlalchemy as sa
from alembic import op

revision = "c3e5a7192003"
down_revision = "b2d4f6081002"


def upgrade() -> None:
    op.add_column("accounts", sa.Column("email", sa.Text, nullable=True))
