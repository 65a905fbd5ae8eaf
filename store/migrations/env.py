"""Alembic environment: runs on the connection the store hands over (store.db.upgrade)."""

from alembic import context
from sqlalchemy import create_engine

from store.models import Base

config = context.config
connection = config.attributes.get("connection")


def run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:  # `alembic -x url=... revision --autogenerate` from a developer's shell
    url = context.get_x_argument(as_dictionary=True).get("url", "sqlite:///.atelier/atelier.db")
    with create_engine(url).connect() as conn:
        run(conn)
        conn.commit()
