"""Alembic environment of the demo shop (online mode only)."""

import os
from logging.config import fileConfig

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name)  # alembic.ini's loggers: "Running upgrade a -> b" lines

dsn = os.environ["SHOP_DSN"]
engine = create_engine(
    "postgresql+psycopg://",
    creator=lambda: psycopg.connect(dsn, application_name="shop-migrate"),
    poolclass=pool.NullPool,
)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
