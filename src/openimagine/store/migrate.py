"""Alembic migrations, applied by ``openimagine serve`` and ``openimagine db upgrade``."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from openimagine.store.db import Database


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "openimagine:migrations")
    # ConfigParser interpolation would choke on "%" in passwords.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database: Database) -> None:
    config = alembic_config(database.url.render_as_string(hide_password=False))
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
