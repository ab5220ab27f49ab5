"""Persistence: SQLAlchemy 2 async models, the engine factory and Alembic migrations."""

from relay.store.db import Database, Prepared, SnapshotCache, insert_at_commit, insert_now
from relay.store.models import Agent, ApiKey, Base, Number, Project

__all__ = [
    "Agent",
    "ApiKey",
    "Base",
    "Database",
    "Number",
    "Prepared",
    "Project",
    "SnapshotCache",
    "insert_at_commit",
    "insert_now",
]
