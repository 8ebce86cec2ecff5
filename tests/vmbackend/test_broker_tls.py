"""amqps to the control broker with the certificate verified (issue 20, item 1), against a REAL
TLS listener: a private RabbitMQ node (tests/rabbit_node.py) with a certificate from a test CA.
The shop and a daemon exchange a command and its events over it; a wrong CA is refused.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orders.messaging import broker
from tests.rabbit_node import RabbitNode, TestCA, start_node
from tests.vmbackend.daemon_helpers import Daemons
from vmbackend.client import Client
from vmbackend.protocol import messages, topology


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RabbitNode, TestCA]]:
    ca = TestCA(tmp_path_factory.mktemp("ca"))
    node = start_node(ca=ca, prefix="warren-tls")
    try:
        yield node, ca
    finally:
        node.stop()


def _events_for(channel, vm_id: str, timeout: float) -> list[dict]:
    found: list[dict] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and not any(e["type"] == "instance.ready" for e in found):
        method, props, body = channel.basic_get(topology.EVENTS_STORE_QUEUE, auto_ack=True)
        if method is None:
            time.sleep(0.2)
            continue
        event = json.loads(body)
        if event.get("instance_id") == vm_id:
            found.append({**event, "_user_id": props.user_id})
    return found


def test_shop_and_daemon_talk_over_amqps(tls_node, settings, tmp_path, tiny_images_root):
    node, ca = tls_node
    url = node.url(tls=True)
    settings.BROKER_CA = str(ca.ca_cert)
    shop = broker.connect(url)  # verified against the test CA, host name included
    daemons = Daemons(tmp_path, node.url(), tiny_images_root)
    try:
        channel = shop.channel()
        broker.declare_topology(channel)
        host_id = f"tls-{uuid.uuid4().hex[:6]}"
        daemons.start(
            host_id,
            amqp_url=url,
            extra_env={
                "WARREN_BROKER_CA": str(ca.ca_cert),
                "WARREN_DRIVER": "simulated",
                "WARREN_SIM_BOOT_SECONDS": "0.1-0.2",
            },
        )
        with Client(url, ca_file=str(ca.ca_cert)) as client:  # the operators' client too
            end = time.monotonic() + 60
            while not client.collect("list-vms", routing_key=topology.host_key(host_id), wait=1):
                assert time.monotonic() < end, "the daemon never answered over amqps"
        vm_id = str(uuid.uuid4())
        channel.confirm_delivery()
        channel.basic_publish(
            topology.COMMANDS_EXCHANGE,
            topology.host_key(host_id),
            messages.command("create-vm", {"image": "tiny", "vm-id": vm_id}),
            broker.json_properties(str(uuid.uuid4()), user_id=topology.connection_user(channel)),
        )
        events = _events_for(channel, vm_id, timeout=60)
        assert [e["type"] for e in events][-1] == "instance.ready", events
        assert {e["_user_id"] for e in events} == {"guest"}  # the daemon's connection's user
    finally:
        broker.close_quietly(shop)
        daemons.cleanup()


def test_a_broker_certificate_from_another_ca_is_refused(tls_node, settings, tmp_path):
    node, _ca = tls_node
    stranger = TestCA(tmp_path / "other")
    settings.BROKER_CA = str(stranger.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):  # an OSError: callers reconnect later
        broker.connect(node.url(tls=True))
    with pytest.raises(ssl.SSLCertVerificationError):  # an OSError: callers reconnect later
        Client(node.url(tls=True), ca_file=str(stranger.ca_cert))


def test_without_a_ca_the_system_store_does_not_trust_the_test_broker(tls_node, settings):
    node, _ca = tls_node
    settings.BROKER_CA = ""
    with pytest.raises(ssl.SSLCertVerificationError):  # an OSError: callers reconnect later
        broker.connect(node.url(tls=True))


def test_a_host_config_names_an_existing_ca_file(tmp_path: Path):
    from vmbackend.host import config

    with pytest.raises(config.ConfigError):
        config.load(env={"WARREN_HOST_ID": "h", "WARREN_BROKER_CA": str(tmp_path / "none.pem")})
    pem = tmp_path / "ca.pem"
    pem.write_text("x")
    assert config.load(env={"WARREN_HOST_ID": "h", "WARREN_BROKER_CA": str(pem)}).broker_ca == str(
        pem
    )
