"""Several nodes share PostgreSQL only: these tests run there alone."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in list(items):
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database") == "sqlite":
            if "tests/cluster/" in str(item.fspath):
                items.remove(item)
