"""branch B: index invoices.account_id"""

from alembic import op

revision = "d4f6b82a3004"
down_revision = "b2d4f6081002"


def upgrade() -> None:
    op.create_index("ix_invoices_account_id", "invoices", ["account_id"])
