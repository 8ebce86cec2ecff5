import json
import uuid

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vmbackend.protocol import messages
from vmbackend.protocol.messages import (
    CreateVM,
    Event,
    ListVMs,
    MalformedEvent,
    Rejected,
    VMCommand,
)


def _body(command="create-vm", **options):
    return json.dumps({"version": 1, "command": command, "options": options}).encode()


def test_the_prototype_create_vm_form_gets_defaults():
    cmd = messages.parse(b'{"command": "create-vm", "options": {"image": "rabbitmq"}}')
    assert isinstance(cmd, CreateVM)
    assert (cmd.image, cmd.memory_mb, cmd.vcpus, cmd.disk_gb) == ("rabbitmq", 512, 1, 4)
    assert cmd.password_generated
    assert cmd.admin_username.startswith("warren-")
    assert len(cmd.admin_password) == 32
    assert len(cmd.vm_id) == 36


def test_a_full_create_vm_is_read_field_by_field():
    cmd = messages.parse(
        _body(
            image="tiny",
            **{
                "vm-id": "0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10",
                "memory-mb": 1024,
                "vcpus": 2,
                "disk-gb": 10,
                "admin": {"username": "warren-3f9e1c", "password": "x" * 32},
                "limits": {"max-connections": 100, "max-queues": 200},
            },
        )
    )
    assert cmd == CreateVM(
        vm_id="0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10",
        image="tiny",
        memory_mb=1024,
        vcpus=2,
        disk_gb=10,
        admin_username="warren-3f9e1c",
        admin_password="x" * 32,
        password_generated=False,
        limits={"max-connections": 100, "max-queues": 200},
    )


def test_the_password_is_not_in_the_repr():
    cmd = messages.parse(
        _body(image="tiny", admin={"username": "u1", "password": "secret-secret-1"})
    )
    assert "secret-secret-1" not in repr(cmd)


def test_vm_commands_and_list():
    assert messages.parse(_body("list-vms")) == ListVMs()
    assert messages.parse(b'{"command": "list-vms"}') == ListVMs()
    assert messages.parse(_body("stop-vm", **{"vm-id": "a1", "kill": True})) == VMCommand(
        "stop-vm", "a1", kill=True
    )
    for name in ("start-vm", "restart-vm", "delete-vm"):
        assert messages.parse(_body(name, **{"vm-id": "a1"})) == VMCommand(name, "a1")


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"create-vm"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"options": {}}', "command must be a string"),
        (b'{"command": 7}', "command must be a string"),
        (b'{"command": "format-disk"}', "unknown command"),
        (b'{"version": 2, "command": "list-vms"}', "unsupported version"),
        (b'{"version": true, "command": "list-vms"}', "unsupported version"),
        (b'{"command": "list-vms", "options": []}', "options must be an object"),
        (b'{"command": "create-vm", "options": {}}', "options.image is required"),
        (b"x" * (64 * 1024 + 1), "larger than"),
    ],
)
def test_it_rejects_malformed_bodies_with_a_reason(body, reason):
    with pytest.raises(Rejected, match=reason):
        messages.parse(body)


@pytest.mark.parametrize(
    "options,reason",
    [
        ({"image": "../../etc/passwd"}, "image name must match"),
        ({"image": "/etc/passwd"}, "image name must match"),
        ({"image": "Rabbit"}, "image name must match"),
        ({"image": ""}, "image name must match"),
        ({"image": 5}, "image name must match"),
        ({"image": "a" * 65}, "image name must match"),
        ({"image": "tiny", "memory-mb": 10**9}, "memory-mb must be between 256 and 16384"),
        ({"image": "tiny", "memory-mb": "512"}, "memory-mb must be an integer"),
        ({"image": "tiny", "memory-mb": 512.5}, "memory-mb must be an integer"),
        ({"image": "tiny", "memory-mb": True}, "memory-mb must be an integer"),
        ({"image": "tiny", "vcpus": 0}, "vcpus must be between 1 and 8"),
        ({"image": "tiny", "disk-gb": 100000}, "disk-gb must be between 1 and 200"),
        ({"image": "tiny", "vm-id": "../x"}, "vm-id must match"),
        ({"image": "tiny", "vm-id": 12}, "vm-id must match"),
        ({"image": "tiny", "admin": "root"}, "admin must be an object"),
        (
            {"image": "tiny", "admin": {"username": "a b", "password": "x" * 20}},
            "username must match",
        ),
        ({"image": "tiny", "admin": {"username": "guest", "password": "x" * 20}}, "not be guest"),
        (
            {"image": "tiny", "admin": {"username": "bob", "password": "short"}},
            "12-128 characters of",
        ),
        (
            {"image": "tiny", "admin": {"username": "bob", "password": "has space in it"}},
            "characters of",
        ),
        (
            {"image": "tiny", "limits": {"max-connections": -1}},
            "max-connections must be an integer",
        ),
        ({"image": "tiny", "limits": {"max-disk": 1}}, "unknown limit"),
        ({"image": "tiny", "limits": [1]}, "limits must be an object"),
    ],
)
def test_it_rejects_bad_create_vm_options(options, reason):
    with pytest.raises(Rejected, match=reason):
        messages.parse(_body(**options))


def test_a_rejection_never_echoes_the_password():
    with pytest.raises(Rejected) as info:
        messages.parse(_body(image="tiny", admin={"username": "a b", "password": "topsecret-xyz"}))
    assert "topsecret-xyz" not in info.value.reason


@pytest.mark.parametrize(
    "options,reason",
    [
        ({}, "vm-id is required"),
        ({"vm-id": "../../x"}, "vm-id must match"),
        ({"vm-id": "a1", "kill": "yes"}, "kill must be true or false"),
    ],
)
def test_it_rejects_bad_vm_command_options(options, reason):
    with pytest.raises(Rejected, match=reason):
        messages.parse(_body("stop-vm", **options))


def test_replies_follow_the_prototype_format():
    assert json.loads(messages.success({"vm-id": "a"})) == {
        "execution-info": {"status": "success"},
        "response": {"vm-id": "a"},
    }
    assert json.loads(messages.error("unknown vm-id")) == {
        "execution-info": {"status": "error", "reason": "unknown vm-id"}
    }


def test_events_carry_the_envelope():
    body = messages.event(
        "instance.progress", instance_id="vm1", host_id="h", seq=3, stage="guest_up"
    )
    assert body["version"] == 1 and body["type"] == "instance.progress"
    assert (body["instance_id"], body["host_id"], body["seq"], body["stage"]) == (
        "vm1",
        "h",
        3,
        "guest_up",
    )
    assert body["message_id"] and body["occurred_at"].endswith("+00:00")
    assert json.loads(messages.encode_event(body)) == body
    with pytest.raises(ValueError):
        messages.event("x", instance_id=None, host_id="h", seq=1, seq_=1, type="y")


def test_a_request_body_round_trips_through_parse():
    body = messages.command("stop-vm", {"vm-id": "a1", "kill": False})
    assert messages.parse(body) == VMCommand("stop-vm", "a1")


# -- hostile bodies: both parsers answer Rejected / MalformedEvent, never another exception -------

DEEP_BRACKETS = b"[" * 50_000  # RecursionError inside json before the depth bound
HUGE_MEMORY = (
    b'{"command": "create-vm", "options": {"image": "tiny", "memory-mb": ' + b"9" * 5000 + b"}}"
)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.sampled_from(["\x00", "a\x00b", "\ud800", "http://x/", "amqp://x/", "guest_up"])
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=12)
            | st.sampled_from(
                [
                    "version",
                    "command",
                    "options",
                    "image",
                    "vm-id",
                    "memory-mb",
                    "admin",
                    "limits",
                    "type",
                    "host_id",
                    "instance_id",
                    "seq",
                    "stage",
                    "management_url",
                    "amqp_url",
                    "capacity",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


def _dump(value) -> bytes:
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except ValueError:  # inf in a float
        return b"{}"


def _command_envelope(options):
    return {"version": 1, "command": "create-vm", "options": options}


def _event_envelope(fields):
    return {
        "version": 1,
        "type": "instance.ready",
        "host_id": "h",
        "instance_id": str(uuid.uuid4()),
        "seq": 1,
        **fields,
    }


def _parses_or_refuses(parser, body, refusal):
    try:
        return parser(body)
    except refusal as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return None


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=200)
    | json_values.map(_dump)
    | json_values.map(lambda v: _dump(_command_envelope(v)))
    | st.dictionaries(
        st.sampled_from(
            ["image", "vm-id", "memory-mb", "vcpus", "disk-gb", "admin", "limits", "kill"]
        ),
        json_values,
    ).map(lambda v: _dump(_command_envelope(v)))
)
@example(DEEP_BRACKETS)
@example(HUGE_MEMORY)
@example(b'{"command": "create-vm", "options": {"image": "tiny\\u0000"}}')
@example(b'{"command": "stop-vm", "options": {"vm-id": "a1", "kill": NaN}}')
def test_any_body_is_a_command_or_rejected(body):
    result = _parses_or_refuses(messages.parse, body, Rejected)
    assert result is None or isinstance(result, CreateVM | ListVMs | VMCommand)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(max_size=200)
    | json_values.map(_dump)
    | st.dictionaries(
        st.sampled_from(
            [
                "version",
                "type",
                "host_id",
                "instance_id",
                "seq",
                "stage",
                "management_url",
                "amqp_url",
                "reason",
                "admin_username",
                "ip_addresses",
                "boot",
                "seconds",
                "capacity",
                "running",
                "free_slots",
                "daemon_version",
            ]
        ),
        json_values,
    ).map(lambda v: _dump(_event_envelope(v)))
)
@example(DEEP_BRACKETS)
@example(b'{"type": "host.heartbeat", "host_id": "h", "capacity": ' + b"9" * 5000 + b"}")
@example(
    b'{"type": "instance.failed", "host_id": "h", "seq": 1, "reason": "a\\u0000b",'
    b' "instance_id": "0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10"}'
)
def test_any_body_is_an_event_or_malformed(body):
    result = _parses_or_refuses(messages.parse_event, body, MalformedEvent)
    assert result is None or isinstance(result, Event)


@pytest.mark.parametrize("depth", [1, 31, 32])
def test_nesting_up_to_the_bound_is_decoded(depth):
    body = (
        b'{"command": "list-vms", "options": {"x": '
        + b"[" * (depth - 2)
        + b"]" * (depth - 2)
        + b"}}"
    )
    if depth < 2:
        body = b'{"command": "list-vms"}'
    assert messages.parse(body) == ListVMs()


def test_brackets_inside_strings_do_not_count_as_nesting():
    body = json.dumps({"command": "list-vms", "options": {"note": "[" * 1000 + '\\"{' * 100}})
    assert messages.parse(body.encode()) == ListVMs()


@pytest.mark.parametrize(
    "body,reason",
    [
        (DEEP_BRACKETS, "deeper than 32"),
        (
            b'{"command": "list-vms", "options": {"x": ' + b"[" * 40 + b"]" * 40 + b"}}",
            "deeper than",
        ),
        (HUGE_MEMORY, "longer than 20 digits"),
        (
            b'{"command": "create-vm", "options": {"image": "tiny", "memory-mb": 1e999}}',
            "memory-mb must be an integer",
        ),
        (b'{"command": "list-vms", "options": {"x": NaN}}', "not UTF-8 JSON"),
        (b'{"command": "list-vms\\u0000"}', "NUL byte"),
        (b'{"command": "list-vms", "options": {"\\u0000": 1}}', "NUL byte"),
        (b'{"command": "list-vms", "options": {"x": "\\ud800"}}', "unpaired surrogate"),
    ],
)
def test_hostile_commands_are_rejected_with_a_reason(body, reason):
    with pytest.raises(Rejected, match=reason):
        messages.parse(body)


VM = "0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10"


def _event_body(type_="instance.accepted", **fields):
    base = {"version": 1, "type": type_, "host_id": "host-a", "instance_id": VM, "seq": 1}
    return json.dumps({**base, **fields}).encode()


def _ready_body(**fields):
    return _event_body(
        "instance.ready",
        **{"management_url": "http://127.0.0.1:1/", "amqp_url": "amqp://u@127.0.0.1:2/", **fields},
    )


@pytest.mark.parametrize(
    "body,reason",
    [
        (b"[]", "must be a JSON object"),
        (DEEP_BRACKETS, "deeper than"),
        (_event_body(version=2), "unsupported version"),
        (_event_body(type=""), "type must be a non-empty string"),
        (_event_body(type=7), "type must be"),
        (_event_body(host_id=None), "host_id must be"),
        (_event_body(host_id="a b"), "host_id must be a host id"),
        (_event_body(host_id="h" * 101), "at most 100"),
        (_event_body(instance_id=None), "instance_id must be"),
        (_event_body(instance_id="vm1"), "instance_id must be a UUID"),
        (_event_body(seq=None), "seq must be an integer between 0 and 9223372036854775807"),
        (_event_body(seq=-1), "seq must be an integer between 0"),
        (_event_body(seq=2**63), "seq must be an integer between 0"),
        (_event_body(seq=True), "seq must be"),
        (_event_body(seq=1.0), "seq must be"),
        (_event_body(seq="1"), "seq must be"),
        (_event_body("instance.progress", stage="dancing"), "stage must be one of"),
        (_event_body("instance.progress"), "stage must be one of"),
        (_ready_body(management_url="ftp://x/"), "management_url the scheme must be one of http"),
        (_ready_body(management_url="javascript:alert(1)"), "management_url is not a URL"),
        (_ready_body(management_url="http://x/" + "a" * 500), "at most 500"),
        (_ready_body(amqp_url="http://x/"), "amqp_url the scheme must be one of amqp"),
        (_ready_body(amqp_url="amqp://u@127.0.0.1:99999/"), "amqp_url the port must be between"),
        (_ready_body(amqp_url=None), "amqp_url must be a non-empty string"),
        (_ready_body(admin_username="a b"), "admin_username must be a user name"),
        (_ready_body(ip_addresses="10.0.2.15"), "ip_addresses must be a list"),
        (_ready_body(ip_addresses=[1]), "ip_addresses must be a list"),
        (_ready_body(boot="warm"), "boot must be one of"),
        (_ready_body(seconds=-1), "seconds must be"),
        (_event_body("instance.failed", reason=["x"]), "reason must be a string"),
        (_event_body("instance.failed", reason="x" * 4001), "at most 4000"),
        (_event_body("instance.failed", reason="a\x00b"), "NUL byte"),
        (_event_body("instance.restarting", attempt=-1), "attempt must be an integer between 0"),
        (_event_body("instance.restarting", attempt="1"), "attempt must be"),
        (_event_body("instance.restarting", reason="x" * 4001), "at most 4000"),
        (_event_body("host.heartbeat", capacity=-1), "capacity must be an integer between 0"),
        (_event_body("host.heartbeat", running=10**7), "running must be an integer between 0"),
        (_event_body("host.heartbeat", free_slots=False), "free_slots must be"),
        (_event_body("host.heartbeat", daemon_version="v" * 51), "at most 50"),
        (_event_body("host.heartbeat", capacity=int("9" * 30)), "longer than 20 digits"),
    ],
)
def test_hostile_events_are_malformed_with_a_reason(body, reason):
    with pytest.raises(MalformedEvent, match=reason):
        messages.parse_event(body)


def test_a_restarting_event_is_built_and_read_with_its_reason_and_attempt():
    body = messages.event(
        "instance.restarting",
        instance_id=str(uuid.uuid4()),
        host_id="h1",
        seq=6,
        reason="QEMU process exited unexpectedly",
        attempt=2,
    )
    event = messages.parse_event(messages.encode_event(body))
    assert (event.type, event.reason, event.attempt, event.seq) == (
        "instance.restarting",
        "QEMU process exited unexpectedly",
        2,
        6,
    )
    assert event.is_instance_event


def test_an_unknown_event_type_is_read_with_its_envelope_only():
    event = messages.parse_event(_event_body("instance.resized", memory_mb=[1, 2], seq=4))
    assert (event.type, event.host_id, event.seq, event.instance_id) == (
        "instance.resized",
        "host-a",
        4,
        None,
    )
    assert not event.is_instance_event


def test_a_heartbeat_without_seq_or_instance_is_read():
    event = messages.parse_event(b'{"type": "host.heartbeat", "host_id": "h", "capacity": 2}')
    assert (event.capacity, event.running, event.free_slots, event.seq) == (2, 0, 0, 0)


def test_a_heartbeat_carries_the_hosts_resources_and_an_old_one_reads_as_zero():
    old = messages.parse_event(b'{"type": "host.heartbeat", "host_id": "h", "capacity": 2}')
    assert old.resources == dict.fromkeys(messages.HEARTBEAT_RESOURCES, 0)
    fields = {name: i + 1 for i, name in enumerate(messages.HEARTBEAT_RESOURCES)}
    new = messages.parse_event(_event_body("host.heartbeat", **fields))
    assert new.resources == fields
    for bad in (-1, True, "12", 2**41):
        with pytest.raises(messages.MalformedEvent, match="memory_free_mb must be an integer"):
            messages.parse_event(_event_body("host.heartbeat", memory_free_mb=bad))


def test_a_declined_create_vm_needs_its_instance_but_no_seq():
    event = messages.parse_event(
        _event_body("instance.declined", seq=0, reason="does not fit", memory_mb=1024)
    )
    assert (event.type, str(event.instance_id), event.reason) == (
        "instance.declined",
        VM,
        "does not fit",
    )
    assert not event.is_instance_event  # not a state of the VM: no (host, seq) ordering
    with pytest.raises(messages.MalformedEvent, match="instance_id"):
        messages.parse_event(_event_body("instance.declined", instance_id="x"))


def test_the_largest_seq_is_read():
    assert messages.parse_event(_event_body(seq=2**63 - 1)).seq == 2**63 - 1


def test_create_vm_plain_ports_is_a_boolean_sent_only_when_false() -> None:
    """docs/tls.md: a plan with TLS only sends "plain-ports": false; absent means true."""
    body = messages.create_vm_body(
        vm_id="0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10", image="rabbitmq-4.0", memory_mb=512,
        vcpus=1, disk_gb=4, admin_username="warren-abc", admin_password="x" * 32, limits={},
    )  # fmt: skip
    assert "plain-ports" not in body["options"]
    parsed = messages.parse(json.dumps(body).encode())
    assert isinstance(parsed, messages.CreateVM) and parsed.plain_ports is True
    body["options"]["plain-ports"] = False
    parsed = messages.parse(json.dumps(body).encode())
    assert isinstance(parsed, messages.CreateVM) and parsed.plain_ports is False
    for bad in ("false", 0, None):
        body["options"]["plain-ports"] = bad
        with pytest.raises(messages.Rejected, match="plain-ports"):
            messages.parse(json.dumps(body).encode())
