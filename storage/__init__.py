"""Persistence: SQLAlchemy 2 models, Alembic migrations and the repository the engine writes to."""

from storage.repository import Store

__all__ = ["Store"]
