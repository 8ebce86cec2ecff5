"""AmqpIO's best-effort path for instance.metrics, against the real broker (the session's vhost):
published without the outbox, bounded while disconnected, stale samples dropped."""

from __future__ import annotations

import logging
import uuid

import pika

from vmbackend.host import config
from vmbackend.host.amqp_io import AmqpIO
from vmbackend.host.registry import Registry
from vmbackend.host.state import StateStore
from vmbackend.protocol import messages, topology
from vmbackend.protocol.messages import Metrics


def _io(tmp_path, amqp_url) -> AmqpIO:
    cfg = config.load(
        env={
            "WARREN_HOST_ID": f"m-{uuid.uuid4().hex[:8]}",
            "WARREN_AMQP_URL": amqp_url,
            "WARREN_STATE_DIR": str(tmp_path),
            "WARREN_CAPACITY": "2",
        }
    )
    return AmqpIO(cfg, Registry(cfg, StateStore(tmp_path)))


def _sample(host_id: str, ready: int) -> dict:
    return messages.metrics_event(
        instance_id=str(uuid.uuid4()),
        host_id=host_id,
        metrics=Metrics(reachable=True, messages_ready=ready, cpu_percent=1.0, rss_bytes=1),
    )


def test_samples_are_published_to_the_events_exchange_and_stale_ones_dropped(
    tmp_path, amqp_url, caplog
):
    io = _io(tmp_path, amqp_url)
    io.connect(lambda delivery: None)
    watcher = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = watcher.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, topology.EVENTS_EXCHANGE, routing_key="instance.metrics")
        io.offer_metrics(_sample(io.cfg.host_id, 1))
        io.offer_metrics(_sample(io.cfg.host_id, 2))
        stamp, body = io.metrics_out[0]
        io.metrics_out[0] = (stamp - 120, body)  # queued two minutes ago: a broker outage
        with caplog.at_level(logging.WARNING):
            assert io.flush_metrics(max_age=30) == 1
        io.connection.process_data_events(time_limit=0.5)
        got = []
        for _ in range(20):
            method, props, raw = channel.basic_get(queue, auto_ack=True)
            if method is None:
                watcher.process_data_events(time_limit=0.1)
                if got:
                    break
                continue
            got.append((method.routing_key, props, messages.parse_event(raw)))
        assert [(key, event.metrics.messages_ready) for key, _p, event in got] == [
            ("instance.metrics", 2)
        ]
        props = got[0][1]
        assert props.content_type == "application/json" and props.delivery_mode != 2
        assert props.message_id == got[0][2].message_id
        assert "metrics dropped" in caplog.text and "count=1" in caplog.text
        assert not io.metrics_out
    finally:
        watcher.close()
        io.close()


def test_while_disconnected_samples_wait_in_a_bounded_buffer(tmp_path, amqp_url):
    io = _io(tmp_path, amqp_url)  # never connected: the broker is "down"
    for ready in range(100):
        io.offer_metrics(_sample(io.cfg.host_id, ready))
    assert io.flush_metrics(max_age=30) == 0
    assert len(io.metrics_out) == io.metrics_out.maxlen == 16  # 2 x capacity, at least 16
    assert io.metrics_dropped == 100 - 16
    assert io.metrics_out[-1][1]["messages_ready"] == 99  # the newest kept, the oldest dropped
