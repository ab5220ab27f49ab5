"""Shared pieces of the API's pydantic models: camelCase JSON, strict input, the page shape
(cutting pages is :mod:`relay.api.pagination`)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

T = TypeVar("T")


class APIModel(BaseModel):
    """Input model: camelCase keys, unknown keys refused (a typo should not pass silently),
    no NaN or Infinity in a number field (not even written as a string)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        str_strip_whitespace=True,
        allow_inf_nan=False,
    )


class OutModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class PageQuery(APIModel):
    limit: int = Field(default=50, ge=1, le=200, description="Page size, at most 200.")
    cursor: str | None = Field(
        default=None, max_length=200, description="`nextCursor` of the page before."
    )


class Page(OutModel, Generic[T]):
    object: str = "list"
    data: list[T]
    has_more: bool
    next_cursor: str | None = None


class Deleted(OutModel):
    id: str
    object: str
    deleted: bool = True


class ErrorBody(OutModel):
    code: str
    message: str
    field: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(OutModel):
    error: ErrorBody
