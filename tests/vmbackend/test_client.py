"""The request/response client against real daemons on the real broker."""

import pytest

from tests.vmbackend.daemon_helpers import Daemons, clean_broker, wait_host
from vmbackend.client import Client, ClientError


@pytest.fixture
def daemons(tmp_path, amqp_url):
    clean_broker(amqp_url)
    (tmp_path / "images").mkdir()
    pool = Daemons(tmp_path, amqp_url, tmp_path / "images")
    yield pool
    pool.cleanup()


def test_one_connection_makes_many_calls_and_collects_every_hosts_reply(daemons, amqp_url):
    a, b = daemons.start(), daemons.start()
    with Client(amqp_url) as client:
        wait_host(client, a.host_id)
        wait_host(client, b.host_id)
        for _ in range(25):
            replies = client.collect("list-vms", wait=10, expect=2)
            assert len(replies) == 2
            assert all(r["execution-info"]["status"] == "success" for r in replies)
        for host in (a, b):
            reply = client.call("stop-vm", {"vm-id": "nope"}, routing_key=f"host.{host.host_id}")
            assert reply["execution-info"]["reason"] == "unknown vm-id"
        assert client.list_vms(wait=10, expect_hosts=2) == []


def test_late_replies_never_leak_into_a_later_call(daemons, amqp_url):
    a, b = daemons.start(), daemons.start()
    with Client(amqp_url) as client:
        wait_host(client, a.host_id)
        wait_host(client, b.host_id)
        early = client.send("list-vms")  # nobody waits for these two replies
        later = client.collect("list-vms", wait=10, expect=2)
        assert len(later) == 2
        client.pump(1.0)
        assert len(client.replies[early]) == 2  # kept under their own correlation id


def test_no_reply_is_a_clear_timeout(amqp_url):
    clean_broker(amqp_url)
    with Client(amqp_url) as client, pytest.raises(ClientError, match="no reply to start-vm"):
        client.call("start-vm", {"vm-id": "x"}, routing_key="host.nobody-here", timeout=1)
