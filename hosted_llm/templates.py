"""``{{variables.x}}``, ``{{user.x}}`` and ``{{call.x}}`` in a system prompt or greeting.

A placeholder whose value is unknown (or null) stays as written, so a typo is visible in
the transcript instead of silently becoming an empty string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*(variables|user|call)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def render(text: str | None, scopes: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Fill every known placeholder of ``text`` from ``scopes`` (``{"call": {...}, ...}``)."""
    if not text or "{{" not in text:
        return text

    def sub(match: re.Match[str]) -> str:
        value = scopes.get(match.group(1), {}).get(match.group(2))
        if value is None or isinstance(value, dict | list):
            return match.group(0)
        return str(value).lower() if isinstance(value, bool) else str(value)

    return PLACEHOLDER.sub(sub, text)
