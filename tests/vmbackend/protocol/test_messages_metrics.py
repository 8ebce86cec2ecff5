"""instance.metrics: the builder the host uses and the parser the shop uses (docs/protocol.md)."""

import json
import math
import uuid

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmbackend.protocol import messages
from vmbackend.protocol.messages import MAX_METRICS_BYTES, MalformedEvent, Metrics

INSTANCE = "0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10"
FULL = Metrics(
    reachable=True,
    messages_ready=12,
    messages_unacked=3,
    publish_rate=41.5,
    deliver_rate=40.0,
    ack_rate=39.25,
    connections=4,
    channels=8,
    consumers=2,
    queues=5,
    mem_used=120_000_000,
    mem_limit=400_000_000,
    disk_free=3_000_000_000,
    disk_free_limit=50_000_000,
    mem_alarm=False,
    disk_alarm=True,
    uptime_s=3600,
    cpu_percent=7.5,
    rss_bytes=300_000_000,
)


def _wire(metrics: Metrics, host_id: str = "host-a") -> bytes:
    body = messages.metrics_event(instance_id=INSTANCE, host_id=host_id, metrics=metrics)
    return messages.encode_event(body)


def _body(**fields) -> bytes:
    data = {
        "version": 1,
        "type": "instance.metrics",
        "message_id": "m1",
        "instance_id": INSTANCE,
        "host_id": "host-a",
        "occurred_at": "2026-11-30T20:00:00+00:00",
        "reachable": True,
        "cpu_percent": 1.0,
        "rss_bytes": 10,
    }
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def test_a_full_sample_round_trips_and_has_no_seq():
    body = messages.metrics_event(instance_id=INSTANCE, host_id="host-a", metrics=FULL)
    assert "seq" not in body and body["type"] == "instance.metrics"
    assert body["occurred_at"].endswith("+00:00") and body["message_id"]
    event = messages.parse_event(messages.encode_event(body))
    assert event.metrics == FULL
    assert event.instance_id == uuid.UUID(INSTANCE)
    assert (event.host_id, event.seq, event.message_id) == ("host-a", 0, body["message_id"])
    assert not event.is_instance_event  # not in the seq / idempotency path


def test_an_unreachable_sample_carries_only_the_host_numbers():
    sample = Metrics(reachable=False, cpu_percent=0.5, rss_bytes=1024)
    body = json.loads(_wire(sample))
    assert body["reachable"] is False
    assert "messages_ready" not in body and body["rss_bytes"] == 1024
    assert messages.parse_event(_wire(sample)).metrics == sample


def test_an_unreachable_sample_never_shows_stale_rabbitmq_numbers():
    event = messages.parse_event(_body(reachable=False, messages_ready=5, mem_alarm=True))
    assert event.metrics == Metrics(reachable=False, cpu_percent=1.0, rss_bytes=10)


def test_absent_and_null_fields_read_as_none():
    event = messages.parse_event(_body(messages_ready=None, cpu_percent=..., rss_bytes=...))
    assert event.metrics == Metrics(reachable=True)


def test_integers_are_accepted_for_rates_and_read_as_floats():
    metrics = messages.parse_event(_body(publish_rate=3, cpu_percent=0)).metrics
    assert metrics is not None
    assert metrics.publish_rate == 3.0 and isinstance(metrics.publish_rate, float)
    assert metrics.cpu_percent == 0.0 and isinstance(metrics.cpu_percent, float)


def test_the_bounds_themselves_are_accepted():
    metrics = messages.parse_event(
        _body(messages_ready=2**63 - 1, publish_rate=1e12, uptime_s=0, ack_rate=0.0)
    ).metrics
    assert metrics is not None
    assert (metrics.messages_ready, metrics.publish_rate) == (2**63 - 1, 1e12)


def test_the_largest_sample_is_below_the_size_bound():
    largest = Metrics(
        reachable=True,
        **{name: 2**63 - 1 for name in messages.METRIC_INTS},
        **{name: 123456789.12345678 for name in messages.METRIC_FLOATS},
        **{name: False for name in messages.METRIC_BOOLS},
        cpu_percent=123456789.12345678,
        rss_bytes=2**63 - 1,
    )
    wire = _wire(largest, host_id="h" * 100)
    assert len(wire) < MAX_METRICS_BYTES
    assert messages.parse_event(wire).metrics == largest


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"reachable": ...}, "reachable must be true or false"),
        ({"reachable": 1}, "reachable must be true or false"),
        ({"reachable": "true"}, "reachable must be true or false"),
        ({"messages_ready": -1}, "messages_ready must be an integer between 0"),
        ({"messages_ready": 2**63}, "messages_ready must be an integer between 0"),
        ({"queues": 1.5}, "queues must be an integer"),
        ({"connections": True}, "connections must be an integer"),
        ({"mem_used": "5"}, "mem_used must be an integer"),
        ({"publish_rate": -0.1}, "publish_rate must be a number between 0 and 1e\\+12"),
        ({"deliver_rate": 1e13}, "deliver_rate must be a number"),
        ({"ack_rate": False}, "ack_rate must be a number"),
        ({"cpu_percent": [1]}, "cpu_percent must be a number"),
        ({"rss_bytes": -5}, "rss_bytes must be an integer"),
        ({"mem_alarm": 0}, "mem_alarm must be true, false or null"),
        ({"disk_alarm": "false"}, "disk_alarm must be true, false or null"),
        ({"instance_id": ...}, "instance_id must be a non-empty string"),
        ({"instance_id": "vm-1"}, "instance_id must be a UUID"),
        ({"occurred_at": ...}, "occurred_at must be an ISO 8601 time"),
        ({"occurred_at": "yesterday"}, "occurred_at must be an ISO 8601 time"),
        ({"occurred_at": "2026-11-30T20:00:00"}, "with a UTC offset"),
        ({"padding": "x" * MAX_METRICS_BYTES}, "smaller than 2048 bytes"),
    ],
)
def test_bad_samples_are_malformed_with_a_reason(fields, reason):
    with pytest.raises(MalformedEvent, match=reason):
        messages.parse_event(_body(**fields))


def test_a_huge_float_that_json_reads_as_infinity_is_refused():
    with pytest.raises(MalformedEvent, match="publish_rate must be a number"):
        messages.parse_event(_body().replace(b'"cpu_percent"', b'"publish_rate": 1e400, "x"'))


@pytest.mark.parametrize(
    "field, value",
    [("messages_ready", -1), ("publish_rate", math.inf), ("rss_bytes", 2**64), ("mem_alarm", 1)],
)
def test_the_builder_refuses_values_the_shop_would_refuse(field, value):
    with pytest.raises(ValueError, match=field):
        messages.metrics_event(
            instance_id=INSTANCE, host_id="h", metrics=Metrics(reachable=True, **{field: value})
        )


# -- Hypothesis: any generated sample round-trips; any body is a sample or MalformedEvent ---------

_ints = st.none() | st.integers(min_value=0, max_value=2**63 - 1)
_floats = st.none() | st.floats(min_value=0, max_value=1e12, allow_nan=False)
_bools = st.none() | st.booleans()
samples = st.builds(
    Metrics,
    reachable=st.booleans(),
    **{name: _ints for name in messages.METRIC_INTS},
    **{name: _floats for name in messages.METRIC_FLOATS},
    **{name: _bools for name in messages.METRIC_BOOLS},
    cpu_percent=_floats,
    rss_bytes=_ints,
)


@settings(max_examples=200, deadline=None)
@given(samples, st.from_regex(messages.HOST_ID_RE, fullmatch=True))
def test_every_sample_the_builder_accepts_round_trips(sample, host_id):
    event = messages.parse_event(_wire(sample, host_id=host_id))
    expected = sample
    if not sample.reachable:
        expected = Metrics(
            reachable=False, cpu_percent=sample.cpu_percent, rss_bytes=sample.rss_bytes
        )
    assert event.metrics == expected
    assert event.host_id == host_id


_anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_field_names = st.sampled_from(
    [
        "reachable",
        "instance_id",
        "occurred_at",
        "host_id",
        "seq",
        *messages.METRIC_INTS,
        *messages.METRIC_FLOATS,
        *messages.METRIC_BOOLS,
        *messages.HOST_METRICS,
    ]
)


def _dump(value) -> bytes:
    try:
        return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
    except ValueError:
        return b"{}"


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(_field_names, _anything, max_size=8).map(
        lambda fields: _dump(
            {
                "type": "instance.metrics",
                "host_id": "h",
                "instance_id": INSTANCE,
                "occurred_at": "2026-11-30T20:00:00+00:00",
                "reachable": True,
                **fields,
            }
        )
    )
    | st.binary(max_size=300)
)
@example(_body(publish_rate=float("nan")).replace(b"NaN", b"NaN"))
@example(_body(occurred_at="2026-13-45T99:00:00+00:00"))
@example(_body(occurred_at="\ud800"))
def test_any_metrics_body_is_a_sample_or_malformed(body):
    try:
        event = messages.parse_event(body)
    except MalformedEvent as exc:
        assert exc.reason
        return
    if event.type == "instance.metrics":
        assert isinstance(event.metrics, Metrics)
        for name in messages.METRIC_FLOATS:
            value = getattr(event.metrics, name)
            assert value is None or (math.isfinite(value) and 0 <= value <= 1e12)
