"""Helpers for the console and activity tests: host events built with the contract's builder
(vmbackend.protocol.messages.event) and applied through the event worker's own entry point, and a fake
of Stripe's HTTP side (the real stripe library builds the requests and parses the answers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from orders.messaging.host_events import handle_message
from orders.models import Instance
from vmbackend.protocol import messages

HOST = "host-a"
RUNTIME = {"rabbitmq_version": "4.0.9", "erlang_version": "27.3.4", "node": "rabbit@warren-vm"}


def event_body(instance: Instance, type_: str, **fields: Any) -> dict[str, Any]:
    """The next event (seq after the last applied) about `instance`, from its host."""
    fresh = Instance.objects.get(pk=instance.pk)
    return messages.event(
        type_,
        instance_id=str(fresh.public_id),
        host_id=fresh.host_id or HOST,
        seq=fresh.last_event_seq + 1,
        **fields,
    )


def apply(instance: Instance, type_: str, **fields: Any) -> str:
    """Build and apply one event as the consumer does (parse, one transaction)."""
    return handle_message(messages.encode_event(event_body(instance, type_, **fields)))


def ready_fields(instance: Instance, runtime: dict[str, str] | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "management_url": "http://127.0.0.1:20001/",
        "amqp_url": f"amqp://{instance.admin_username}@127.0.0.1:20002/",
        "admin_username": instance.admin_username,
        "ip_addresses": ["10.0.2.15"],
        "boot": "restore",
        "seconds": 2.5,
    }
    if runtime is not None:
        fields["runtime"] = runtime
    return fields


def make_ready(instance: Instance, runtime: dict[str, str] | None = RUNTIME) -> Instance:
    """accepted, then ready: the instance and its order are ready on HOST."""
    assert apply(instance, messages.INSTANCE_ACCEPTED, image="tiny") == "applied"
    assert apply(instance, messages.INSTANCE_READY, **ready_fields(instance, runtime)) == "applied"
    return Instance.objects.select_related("order__plan").get(pk=instance.pk)


def outcome(
    instance: Instance, request_id: Any, command: str, *, failed: str = "", **sizes: int
) -> str:
    """The host's instance.command_done (or command_failed with reason `failed`)."""
    if failed:
        return apply(
            instance,
            messages.INSTANCE_COMMAND_FAILED,
            command=command,
            request_id=str(request_id),
            reason=failed,
        )
    return apply(
        instance,
        messages.INSTANCE_COMMAND_DONE,
        command=command,
        request_id=str(request_id),
        **sizes,
    )


class FakeStripe:
    """Stripe's servers as the stripe library's HTTP client sees them: each request is recorded
    (method, path, form fields, idempotency key) and answered from `answers` by (method, path)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answers: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}

    def answer(self, method: str, path: str, body: dict[str, Any], status: int = 200) -> None:
        self.answers[(method.upper(), path)] = (status, body)

    def request(
        self, method: str, url: str, headers: Any, post_data: Any = None
    ) -> tuple[bytes, int, dict[str, str]]:
        path = urlsplit(url).path
        form = dict(parse_qsl(post_data or "")) if isinstance(post_data, str) else {}
        self.calls.append(
            {
                "method": method.upper(),
                "path": path,
                "form": form,
                "idempotency_key": (headers or {}).get("Idempotency-Key"),
            }
        )
        status, body = self.answers.get(
            (method.upper(), path),
            (404, {"error": {"type": "invalid_request_error", "code": "resource_missing"}}),
        )
        return json.dumps(body).encode(), status, {"Request-Id": "req_fake"}

    def paths(self, method: str = "POST") -> list[str]:
        return [call["path"] for call in self.calls if call["method"] == method]


def install_fake_stripe(monkeypatch: pytest.MonkeyPatch, settings: Any) -> FakeStripe:
    """Stripe keys on, and the stripe library's HTTP client talking to a FakeStripe."""
    settings.STRIPE_SECRET_KEY = "sk_test_warren"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test_console"
    fake = FakeStripe()
    monkeypatch.setattr(
        "stripe.RequestsClient.request", lambda self, *a, **k: fake.request(*a, **k)
    )
    return fake


SendEmail = Callable[..., bool]
