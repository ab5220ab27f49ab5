"""Persistence: SQLAlchemy 2 async models, the database handle and Alembic migrations.

``db`` is the handle (engine, sessions, the writers' lock); ``group_commit``, ``prepared``,
``versions``, ``sqlite`` and ``migrate`` are its mechanisms, one module each.
"""

from relay.store.db import Database
from relay.store.models import Agent, ApiKey, Base, Number, Project
from relay.store.prepared import Prepared, insert_at_commit, insert_now
from relay.store.versions import SnapshotCache

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
