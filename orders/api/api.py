"""The API object: its routers, its token check, and every error answered as a problem document."""

from __future__ import annotations

import logging
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer

from orders.api import monitoring, problems, servers
from orders.models import ApiToken

log = logging.getLogger(__name__)


class TokenAuth(HttpBearer):
    """The token the middleware found (orders/api/middleware.py): looked up once per request."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        found: ApiToken | None = getattr(request, "api_token", None)
        return found


class WarrenApi(NinjaAPI):
    def get_openapi_schema(self, *args: Any, **kwargs: Any) -> Any:
        """The library's schema, with the error answers' media type as they are sent."""
        schema = super().get_openapi_schema(*args, **kwargs)
        for operations in schema["paths"].values():
            for operation in operations.values():
                for code, answer in operation["responses"].items():
                    if int(code) >= 400 and "application/json" in answer.get("content", {}):
                        answer["content"] = {
                            problems.CONTENT_TYPE: answer["content"]["application/json"]
                        }
        return schema


api = WarrenApi(
    title="Warren API",
    version="1",
    description="Hosted RabbitMQ servers: plans, servers, jobs, metrics and alarms (docs/api.md).",
    urls_namespace="api",
    auth=TokenAuth(),
    docs_url=None,  # the schema is served; docs/api.md is the guide
)
api.add_router("", servers.router)
api.add_router("", monitoring.router)


@api.exception_handler(problems.ApiProblem)
def _problem(request: HttpRequest, exc: problems.ApiProblem) -> HttpResponse:
    return problems.from_exception(request, exc)


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    return problems.validation(request, exc.errors)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: Exception) -> HttpResponse:
    return problems.problem(request, 401, "A valid API token is needed (Authorization: Bearer).")


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return problems.problem(request, exc.status_code, str(exc.message))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Exception) -> HttpResponse:
    return problems.problem(request, 404, "Not found.", kind="not-found")


@api.exception_handler(Exception)
def _crash(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.exception("event=api_error path=%s error=%s", request.path, type(exc).__name__)
    return problems.problem(request, 500, "Something went wrong on our side.")


def schema() -> dict[str, Any]:
    return dict(api.get_openapi_schema())
