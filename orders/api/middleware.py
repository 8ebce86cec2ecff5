"""What every /api/v1/ request passes before and after its operation: the token, the rate limit,
the idempotency key, and the problem shape of any error answer (orders/api/problems.py).

Here rather than in the operations so that no operation can forget one of them, and so that a
replayed answer is the very bytes of the first one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from orders.api import problems, tokens
from orders.models import ApiToken, IdempotentRequest

log = logging.getLogger(__name__)

PREFIX = "/api/v1/"
KEY_HEADER = "Idempotency-Key"
KEEP_KEYS = timedelta(hours=24)  # a key's answer is replayed this long; after it, the key is new

Respond = Callable[[HttpRequest], HttpResponse]


class ApiMiddleware:
    def __init__(self, get_response: Respond) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(PREFIX):
            return self.get_response(request)
        token = None
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            token = tokens.authenticate(header[7:].strip())
        request.api_token = token  # type: ignore[attr-defined]  # read by orders/api/auth.py
        if token is not None:
            wait = retry_after(token)
            if wait:
                log.info("event=api_rate_limited token_id=%s wait=%s", token.pk, wait)
                return problems.problem(
                    request,
                    429,
                    f"More than {settings.API_RATE_LIMIT} requests in "
                    f"{settings.API_RATE_WINDOW_SECONDS} s; try again later.",
                    kind="rate-limited",
                    headers={"Retry-After": str(wait)},
                )
            if request.method == "POST" and KEY_HEADER in request.headers:
                return idempotent(request, token, self._respond)
        return self._respond(request)

    def _respond(self, request: HttpRequest) -> HttpResponse:
        return problems.ensure_problem(request, self.get_response(request))


def retry_after(token: ApiToken) -> int:
    """0 when the token may make this request, else the seconds until its window ends.

    A fixed window per token, counted atomically in the cache (add creates the counter once,
    incr counts without a read-modify-write race between requests). With several processes the
    cache must be shared (WARREN_CACHE_URL), or each process counts alone."""
    window = int(settings.API_RATE_WINDOW_SECONDS)
    now = time.time()
    start = int(now // window * window)
    key = f"api-rate:{token.token_hash[:32]}:{start}"  # the hash: a row id can come back
    cache.add(key, 0, timeout=window * 2)
    try:
        count = int(cache.incr(key))
    except ValueError:  # evicted between add and incr: this request starts the count again
        cache.add(key, 1, timeout=window * 2)
        count = 1
    if count <= settings.API_RATE_LIMIT:
        return 0
    return max(1, math.ceil(start + window - now))


def _fingerprint(request: HttpRequest) -> str:
    digest = hashlib.sha256()
    for part in (request.method or "", request.get_full_path(), request.body):
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def idempotent(request: HttpRequest, token: ApiToken, respond: Respond) -> HttpResponse:
    """Answer a POST with an Idempotency-Key once: a repeat (same token, key, method, path and
    body) gets the stored first answer; the same key with another request gets 422; a repeat
    while the first is still running gets 409. Answers 5xx and 429 are not kept (a retry runs)."""
    key = request.headers[KEY_HEADER]
    if not 1 <= len(key) <= 200 or not key.isprintable():
        return problems.problem(
            request, 400, "An Idempotency-Key has 1 to 200 printable characters.", kind="bad-key"
        )
    fingerprint = _fingerprint(request)
    IdempotentRequest.objects.filter(
        token=token, created_at__lt=timezone.now() - KEEP_KEYS
    ).delete()
    try:
        # Race: two requests with this key at once. The unique (token, key) lets one insert
        # win; the other finds the row (running or done) below.
        with transaction.atomic():
            record = IdempotentRequest.objects.create(
                token=token, key=key, request_hash=fingerprint
            )
    except IntegrityError:
        return _replay(request, token, key, fingerprint)
    try:
        response = respond(request)
    except BaseException:
        record.delete()
        raise
    if response.status_code >= 500 or response.status_code == 429 or response.streaming:
        record.delete()
        return response
    IdempotentRequest.objects.filter(pk=record.pk).update(
        status_code=response.status_code,
        content_type=response.get("Content-Type", ""),
        body=response.content,
    )
    return response


def _replay(request: HttpRequest, token: ApiToken, key: str, fingerprint: str) -> HttpResponse:
    first = IdempotentRequest.objects.filter(token=token, key=key).first()
    if first is None:  # the first request failed and let its key go: try once more later
        return problems.problem(
            request,
            409,
            "A request with this key just failed; retry.",
            kind="key-in-use",
            headers={"Retry-After": "1"},
        )
    if first.request_hash != fingerprint:
        return problems.problem(
            request,
            422,
            "This Idempotency-Key was used for a different request.",
            kind="key-reused",
        )
    if not first.status_code:
        return problems.problem(
            request,
            409,
            "The first request with this Idempotency-Key is still running.",
            kind="key-in-use",
            headers={"Retry-After": "1"},
        )
    response = HttpResponse(
        bytes(first.body), status=first.status_code, content_type=first.content_type
    )
    response["Idempotent-Replayed"] = "true"
    return response
