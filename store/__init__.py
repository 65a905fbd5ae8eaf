"""The store: database (SQLAlchemy + Alembic), content-addressed blobs, dataset versions."""
