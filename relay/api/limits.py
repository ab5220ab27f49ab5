"""What a request may carry: the input limits every route enforces before anything is stored.

Python's ``json`` module reads more than JSON and more than the store or a tenant's receiver
can take: NaN and Infinity (which strict parsers refuse when we later send them in a webhook
body), integers no double holds exactly, nesting deep enough to exhaust the stack, and
strings with NUL or lone surrogates (which PostgreSQL and UTF-8 refuse). ``parse_body``
reads a body and refuses each of those with a stable code, naming the field; ``cap`` is the
size cap of free-form objects (``metadata``, ``variables``), applied by their models.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from relay.errors import BadRequest, invalid_field

MAX_DEPTH = 32
MAX_INTEGER = 2**53 - 1  # the largest integer every JSON parser (doubles) reads exactly
MAX_OBJECT_KEYS = 50
MAX_OBJECT_BYTES = 16 * 1024

MALFORMED_JSON = "The request body is not valid JSON."
TOO_DEEP = f"JSON may nest objects and arrays at most {MAX_DEPTH} deep."
INTEGER_RANGE = (
    "Integers must lie between -(2**53 - 1) and 2**53 - 1, so every JSON parser reads them "
    "exactly; send a larger one as a string."
)
NOT_FINITE = "NaN and Infinity are not JSON numbers; send a finite number, a string or null."
NUL_IN_TEXT = "Text may not contain the NUL character (\\u0000)."
NOT_UNICODE = "Text must be valid Unicode; a lone surrogate such as \\ud800 is not."
TOO_MANY_KEYS = f"at most {MAX_OBJECT_KEYS} keys"
TOO_MANY_BYTES = f"at most {MAX_OBJECT_BYTES // 1024} KiB serialized as JSON"

_LONGEST_INTEGER = len(str(MAX_INTEGER)) + 1  # a sign


class _Refused:
    """What the parser's hooks hand back in place of a value JSON should not hold, so the
    walk that follows can name the field that held it."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _integer(digits: str) -> int | _Refused:
    # Counted before int(): past 4300 digits int() raises, and well before that it is slow.
    if len(digits) > _LONGEST_INTEGER:
        return _Refused(INTEGER_RANGE)
    value = int(digits)
    return value if -MAX_INTEGER <= value <= MAX_INTEGER else _Refused(INTEGER_RANGE)


def _constant(_name: str) -> _Refused:
    return _Refused(NOT_FINITE)


def _text_error(text: str) -> str | None:
    if "\x00" in text:
        return NUL_IN_TEXT
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return NOT_UNICODE
    return None


def refuse_bad_text(field: str, text: str) -> None:
    """Raise 422 ``invalid_text`` for text the store cannot hold: a NUL, a lone surrogate."""
    problem = _text_error(text)
    if problem is not None:
        raise invalid_field(field, problem, code="invalid_text")


def parse_body(raw: bytes) -> Any:
    """The JSON document ``raw`` holds, within the limits above.

    Raises:
        BadRequest: 400 ``malformed_json`` (not JSON) or ``invalid_json`` (too deep, an
            integer out of range, NaN or Infinity), naming the field where it can.
        ValidationFailed: 422 ``invalid_text`` (a NUL or a lone surrogate), naming the field.
    """
    try:
        data = json.loads(raw, parse_int=_integer, parse_constant=_constant)
    except RecursionError as exc:  # deeper than the interpreter's stack: far past MAX_DEPTH
        raise BadRequest(TOO_DEEP, code="invalid_json") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadRequest(MALFORMED_JSON, code="malformed_json") from exc
    _walk(data)
    return data


def _walk(data: Any) -> None:
    # Iterative, so a document just under the interpreter's limit cannot overflow it here.
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, field, depth = stack.pop()
        if isinstance(value, str):
            refuse_bad_text(field or "body", value)
        elif isinstance(value, dict | list):
            if depth == MAX_DEPTH:
                raise BadRequest(TOO_DEEP, code="invalid_json", field=field or None)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                name = f"{field}.{key}" if field else str(key)
                if isinstance(key, str):
                    refuse_bad_text(field or "body", key)
                stack.append((item, name, depth + 1))
        elif isinstance(value, _Refused):
            raise BadRequest(value.message, code="invalid_json", field=field or None)
        elif isinstance(value, float) and not math.isfinite(value):  # 1e400 reads as inf
            raise BadRequest(NOT_FINITE, code="invalid_json", field=field or None)


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON: how free-form objects are measured."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def cap(code: str) -> AfterValidator:
    """Annotate a free-form object with this: at most 50 keys and 16 KiB of JSON, or the
    field's error (and the response's, when it is the only one) has ``code``."""

    def check(value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > MAX_OBJECT_KEYS:
            raise PydanticCustomError(code, TOO_MANY_KEYS)
        if json_size(value) > MAX_OBJECT_BYTES:
            raise PydanticCustomError(code, TOO_MANY_BYTES)
        return value

    return AfterValidator(check)


# The key cap in the OpenAPI document (the byte cap has no JSON-schema keyword).
KEYS_SCHEMA = Field(json_schema_extra={"maxProperties": MAX_OBJECT_KEYS})
Metadata = Annotated[dict[str, Any], cap("metadata_too_large"), KEYS_SCHEMA]
# Codes a model's field may raise that the response carries instead of validation_error.
FIELD_CODES = frozenset(
    {
        "metadata_too_large",
        "variables_too_large",
        "invalid_transfer_destination",
        "transfer_destinations_required",
    }
)
