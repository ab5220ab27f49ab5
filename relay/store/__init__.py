"""Persistence: SQLAlchemy 2 async models, the engine factory and Alembic migrations."""

from relay.store.db import Database
from relay.store.models import Agent, ApiKey, Base, Number, Project

__all__ = ["Agent", "ApiKey", "Base", "Database", "Number", "Project"]
