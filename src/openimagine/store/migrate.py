"""Alembic migrations, applied by ``openimagine serve`` and ``openimagine db upgrade``."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from openimagine.store.db import Database

# PostgreSQL advisory lock key held while migrating ("openimag" in ASCII).
MIGRATION_LOCK = 0x6F70656E696D6167


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "openimagine:migrations")
    # ConfigParser interpolation would choke on "%" in passwords.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database: Database) -> None:
    config = alembic_config(database.url.render_as_string(hide_password=False))
    with database.sql.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting together take turns: the later ones find the schema
            # at head instead of racing to create the same tables.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
