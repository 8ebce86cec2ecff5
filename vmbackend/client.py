"""Request/response client for the `computing` exchange (docs/protocol.md).

One connection serves any number of calls: replies come back on RabbitMQ's direct reply-to
(`amq.rabbitmq.reply-to`) and are matched to their request by correlation_id, so replies to an
earlier call (say, a slow host answering list-vms late) never get mixed into a later one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import defaultdict
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from vmbackend.protocol import broker_tls, messages, topology

REPLY_TO = "amq.rabbitmq.reply-to"


class ClientError(Exception):
    """No reply within the timeout, or a reply that is not the protocol's JSON."""


class Client:
    def __init__(self, amqp_url: str, *, connect_timeout: float = 10, ca_file: str | None = None):
        # amqps: verified against ca_file, else WARREN_BROKER_CA, else the system's CAs.
        ca_file = ca_file if ca_file is not None else os.environ.get("WARREN_BROKER_CA", "")
        params = broker_tls.with_tls(pika.URLParameters(amqp_url), ca_file)
        params.socket_timeout = connect_timeout
        params.blocked_connection_timeout = 60
        params.connection_attempts = 1
        self.connection = pika.BlockingConnection(params)
        self.channel = self.connection.channel()
        topology.ensure_common(self.channel)  # an operator's user only checks it exists
        self.user = topology.connection_user(self.channel)
        self.replies: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
        self.events: list[dict[str, Any]] = []
        self.events_queue: str | None = None

    def _on_reply(
        self, _ch: BlockingChannel, _method: Basic.Deliver, props: BasicProperties, body: bytes
    ) -> None:
        try:
            data = json.loads(body)
        except ValueError:
            data = {"execution-info": {"status": "error", "reason": "reply is not JSON"}}
        self.replies[props.correlation_id or ""].append(data)

    def send(
        self, command: str, options: dict[str, Any] | None = None, *, routing_key: str | None = None
    ) -> str:
        """Publish one request; returns its correlation id."""
        return self.send_raw(messages.command(command, options), routing_key or command)

    def send_raw(self, body: bytes, routing_key: str) -> str:
        """Publish `body` as-is (any bytes) with reply_to set; returns its correlation id."""
        correlation_id = str(uuid.uuid4())
        self.channel.basic_publish(
            topology.COMMANDS_EXCHANGE,
            routing_key,
            body,
            pika.BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                reply_to=REPLY_TO,
                correlation_id=correlation_id,
                message_id=str(uuid.uuid4()),
                user_id=self.user,  # hosts obey only their WARREN_COMMAND_SENDERS
            ),
        )
        return correlation_id

    def wait_reply(self, correlation_id: str, timeout: float) -> dict[str, Any]:
        """The first reply to an earlier `send`/`send_raw`."""
        self._pump_until(lambda: self.replies.get(correlation_id), timeout)
        got = self.replies.pop(correlation_id, [])
        if not got:
            raise ClientError(f"no reply within {timeout} s")
        return got[0]

    def _pump_until(self, done: Any, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            self.connection.process_data_events(
                time_limit=min(0.1, max(0.0, end - time.monotonic()))
            )

    def call(
        self,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        routing_key: str | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Send and wait for the first reply (create-vm, or a command sent to one host)."""
        correlation_id = self.send(command, options, routing_key=routing_key)
        try:
            return self.wait_reply(correlation_id, timeout)
        except ClientError:
            raise ClientError(f"no reply to {command} within {timeout} s") from None

    def collect(
        self,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        routing_key: str | None = None,
        wait: float = 2.0,
        expect: int | None = None,
    ) -> list[dict[str, Any]]:
        """Send a broadcast and gather replies for `wait` seconds (or until `expect` replies)."""
        correlation_id = self.send(command, options, routing_key=routing_key)
        self._pump_until(
            lambda: expect is not None and len(self.replies.get(correlation_id, [])) >= expect, wait
        )
        return self.replies.pop(correlation_id, [])

    def list_vms(
        self, *, wait: float = 2.0, expect_hosts: int | None = None
    ) -> list[dict[str, Any]]:
        """Every VM every answering host reports."""
        vms: list[dict[str, Any]] = []
        for reply in self.collect(messages.LIST_VMS, wait=wait, expect=expect_hosts):
            if reply.get("execution-info", {}).get("status") == "success":
                vms.extend(reply.get("response") or [])
        return vms

    # -- events (for --wait-ready and tests)
    def watch_events(self, pattern: str = "instance.*") -> None:
        """Start receiving events (a private auto-delete queue bound to warren.events)."""
        result = self.channel.queue_declare("", exclusive=True, auto_delete=True)
        self.events_queue = result.method.queue
        self.channel.queue_bind(self.events_queue, topology.EVENTS_EXCHANGE, routing_key=pattern)
        self.channel.basic_consume(self.events_queue, self._on_event, auto_ack=True)

    def _on_event(
        self, _ch: BlockingChannel, _method: Basic.Deliver, _props: BasicProperties, body: bytes
    ) -> None:
        try:
            self.events.append(json.loads(body))
        except ValueError:
            pass

    def wait_event(self, vm_id: str, types: tuple[str, ...], timeout: float) -> dict[str, Any]:
        """The first watched event for `vm_id` whose type is in `types`."""

        def find() -> dict[str, Any] | None:
            for event in self.events:
                if event.get("instance_id") == vm_id and event.get("type") in types:
                    return event
            return None

        self._pump_until(find, timeout)
        found = find()
        if found is None:
            raise ClientError(f"no {'/'.join(types)} event for {vm_id} within {timeout} s")
        return found

    def pump(self, seconds: float) -> None:
        """Process I/O (replies, events) for `seconds`."""
        self.connection.process_data_events(time_limit=seconds)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
