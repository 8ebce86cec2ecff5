"""The operations of the served OpenAPI schema, and how to call each one for a customer: the
schema drives the tests, so an endpoint added later is called (and checked) without a new test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from orders.api.api import schema
from tests.orders.api.conftest import API, Customer


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # with {placeholders}, without the /api/v1 prefix
    spec: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.method.upper()} {self.path}"

    @property
    def writes(self) -> bool:
        return self.method in ("post", "put", "patch", "delete")


def served() -> dict[str, Any]:
    """The schema as /api/v1/openapi.json serves it (JSON: status codes are strings)."""
    return dict(json.loads(json.dumps(schema(), default=str)))


def operations() -> list[Operation]:
    found = []
    for path, methods in served()["paths"].items():
        for method, spec in methods.items():
            found.append(Operation(method, path.removeprefix(API), spec))
    return found


# The body each operation that takes one is called with (a new one fails until it is added).
BODIES: dict[str, Any] = {
    "POST /servers": {"plan": "api-large"},
    "POST /servers/{server_id}/change-plan": {"plan": "api-large"},
    "POST /servers/{server_id}/alarms": {"kind": "connections", "threshold": 50, "minutes": 2},
}


def fill(op: Operation, owner: Customer) -> tuple[str, Any]:
    """The URL of `op` on `owner`'s objects, and its body."""
    values = {
        "server_id": owner.order.public_id,
        "job_id": owner.job.request_id,
        "alarm_id": owner.alarm.pk,
    }
    path = op.path
    for param in op.spec.get("parameters", []):
        if param["in"] == "path":
            assert param["name"] in values, f"{op.id}: no value for {param['name']} in fill()"
            path = path.replace("{" + param["name"] + "}", str(values[param["name"]]))
    body = None
    if "requestBody" in op.spec:
        assert op.id in BODIES, f"{op.id} takes a body: add one to BODIES"
        body = BODIES[op.id]
    return path, body


def check_answer(op: Operation, status: int, body: Any, content_type: str) -> None:
    """The answer is one the schema lists for the operation, with that media type and shape."""
    document = served()
    answers = op.spec["responses"]
    assert str(status) in answers, f"{op.id} answered {status}, not in its schema {list(answers)}"
    content = answers[str(status)].get("content")
    if content is None:
        assert body is None, f"{op.id} {status}: the schema says no body"
        return
    (media, spec), *_ = content.items()
    assert content_type.split(";")[0] == media, f"{op.id} {status}: {content_type} != {media}"
    registry = Registry().with_resource(
        "urn:openapi", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:openapi#" + spec["schema"]["$ref"].removeprefix("#")}
        if "$ref" in spec["schema"]
        else spec["schema"],
        registry=registry,
        format_checker=jsonschema.FormatChecker(),
    )
    validator.validate(body)
