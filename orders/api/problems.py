"""One error shape for the whole API: RFC 9457 problem details (application/problem+json).

Every error answer is built here: the operations' own (ApiProblem), the library's (validation,
authentication), Django's (an unknown URL, a wrong method, an unhandled exception), and the
middleware's (rate limit, idempotency). No error answer carries a traceback or a secret.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from django.http import HttpRequest, HttpResponse

CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://warren.example/problems/"  # a name for the kind of problem, not fetched


class ApiProblem(Exception):
    """An operation's refusal: raised anywhere below a view, answered as a problem document."""

    def __init__(
        self, status: int, detail: str, *, kind: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.headers = headers or {}


def not_found(what: str = "Not found") -> ApiProblem:
    return ApiProblem(404, what, kind="not-found")


def problem(
    request: HttpRequest | None,
    status: int,
    detail: str = "",
    *,
    kind: str = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> HttpResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind if kind else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or HTTPStatus(status).description,
    }
    if request is not None:
        body["instance"] = request.path
    body |= extra
    response = HttpResponse(json.dumps(body), status=status, content_type=CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="warren"'
    return response


def from_exception(request: HttpRequest, exc: ApiProblem) -> HttpResponse:
    return problem(request, exc.status, exc.detail, kind=exc.kind, headers=exc.headers)


def validation(request: HttpRequest, errors: list[dict[str, Any]]) -> HttpResponse:
    """422 with each error's location and message (never the rejected input: it may be a secret)."""
    listed = [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        for error in errors
    ]
    return problem(request, 422, "The request is not valid.", kind="validation", errors=listed)


def ensure_problem(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """Any error answer that is not a problem document yet (Django's own 404, 405 and 500 pages)
    becomes one with the same status and headers that matter."""
    if response.status_code < 400 or response.get("Content-Type", "").startswith(CONTENT_TYPE):
        return response
    headers = {name: response[name] for name in ("Allow", "Retry-After") if name in response}
    return problem(request, response.status_code, headers=headers)
