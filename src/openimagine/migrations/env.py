"""Alembic environment: runs on the connection handed in by ``store.migrate``."""

from alembic import context
from sqlalchemy import create_engine

from openimagine.store.models import Base

config = context.config
connection = config.attributes.get("connection")


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url") or "").connect() as fresh:
        _run(fresh)
        fresh.commit()
