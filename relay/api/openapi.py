"""The OpenAPI 3.1 document, built from the route table and the pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from relay import __version__
from relay.api import webhook_payloads
from relay.api.routing import Endpoint
from relay.api.schema import ErrorResponse

REF = "#/components/schemas/{model}"
STATUS_TEXT = {
    400: "Malformed JSON or request",
    401: "Missing or invalid API key",
    403: "The key may not do this",
    404: "Not found in this project",
    405: "Method not allowed",
    409: "Conflict with the current state",
    413: "Body larger than 1 MiB",
    415: "Body is not application/json",
    422: "Validation failed; every offending field is named",
    429: "Rate limited; see Retry-After",
    502: "The carrier failed",
}

WWW_AUTHENTICATE = {
    "description": 'The scheme to use: `Bearer realm="conversation-relay"`, with '
    '`error="invalid_token"` when the key sent is not valid.',
    "schema": {"type": "string"},
}

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Send the request again with the same key and get the first answer back "
    "(kept 24 h, per project). The same key with another request: 422 "
    "`idempotency_key_reused`; while the first is still running: 409 `idempotency_key_in_use` "
    "with Retry-After. A request that failed is not kept.",
}
REPLAYED = {
    "description": "`true` when this is the first answer to the same Idempotency-Key, replayed.",
    "schema": {"type": "string", "enum": ["true"]},
}


def _params(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True, ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def build(endpoints: list[Endpoint], extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(ErrorResponse, "serialization")]
    models += [(m, "serialization") for m in webhook_payloads.MODELS]
    for ep in endpoints:
        if ep.body is not None:
            models.append((ep.body, "validation"))
        if isinstance(ep.response, type) and issubclass(ep.response, BaseModel):
            models.append((ep.response, "serialization"))
    keys, top = models_json_schema(models, by_alias=True, ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    paths: dict[str, Any] = dict(extra_paths or {})
    for ep in endpoints:
        op: dict[str, Any] = {
            "operationId": ep.handler.__name__,
            "summary": ep.summary,
            "tags": [ep.tag],
            "responses": {},
        }
        if ep.description:
            op["description"] = ep.description
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "maxLength": 60},
            }
            for name in re.findall(r"{(\w+)}", ep.path)
        ]
        if ep.query is not None:
            params += _params(ep.query, schemas)
        if ep.idempotent:
            params.append(IDEMPOTENCY_KEY)
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": not ep.body_optional,
                "content": {"application/json": {"schema": keys[(ep.body, "validation")]}},
            }
        for status in (ep.status, *ep.also):
            if ep.media_type is not None:
                op["responses"][str(status)] = {
                    "description": STATUS_TEXT.get(status, "OK"),
                    "content": {ep.media_type: {"schema": {"type": "string", "format": "binary"}}},
                }
            elif ep.response is not None:
                op["responses"][str(status)] = {
                    "description": STATUS_TEXT.get(status, "OK"),
                    "content": {
                        "application/json": {"schema": keys[(ep.response, "serialization")]}
                    },
                }
            else:
                op["responses"][str(status)] = {"description": STATUS_TEXT.get(status, "OK")}
        error_ref = {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}
        errors = sorted({*ep.errors, 400, 409, 422}) if ep.idempotent else ep.errors
        for status in errors:
            op["responses"][str(status)] = {
                "description": STATUS_TEXT.get(status, "Error"),
                "content": error_ref,
            }
        if ep.idempotent:
            for status in (ep.status, *ep.also):
                op["responses"][str(status)]["headers"] = {"Idempotent-Replayed": REPLAYED}
        if "401" in op["responses"]:
            op["responses"]["401"]["headers"] = {"WWW-Authenticate": WWW_AUTHENTICATE}
        if ep.auth != "none":
            op["security"] = [{"bearer": []}, {"apiKey": []}]
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Conversation Relay API",
            "version": __version__,
            "description": "Phone numbers, web calls and SMS for AI agents; every turn goes to "
            'your webhook. Errors always have the shape {"error": {"code", "message", '
            '"field"}}. Under overload any operation may answer 503 `overloaded`, and after '
            "a lost database connection 503 `database_unavailable`, both with Retry-After.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "webhooks": webhook_payloads.webhooks(
            {m: keys[(m, "serialization")] for m in webhook_payloads.MODELS}
        ),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "callToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A web call's token",
                },
            },
        },
    }
