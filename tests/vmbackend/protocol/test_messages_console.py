"""The console's part of the contract (issue 11): set-admin-password, resize-vm, restart-vm with
a request-id, the outcome events instance.command_done/failed and instance.ready's runtime.

Builders round-trip through the parsers (what the shop writes is what the host reads, and the
other way round), and generated hostile bodies end in Rejected/MalformedEvent, nothing else.
"""

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
    ResizeVM,
    SetAdminPassword,
    VMCommand,
)

VM = "0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10"
REQ = "5f1d2c3b-4a59-4e8f-9d0c-1b2a3c4d5e6f"
PASSWORD = "n3w-Secret-password-0123456789ab"


def _body(command, **options):
    return json.dumps({"version": 1, "command": command, "options": options}).encode()


# -- commands -------------------------------------------------------------------------------------


def test_set_admin_password_is_read_field_by_field_and_hides_the_password():
    cmd = messages.parse(
        _body(
            "set-admin-password",
            **{
                "vm-id": VM,
                "request-id": REQ,
                "admin": {"username": "warren-1", "password": PASSWORD},
            },
        )
    )
    assert cmd == SetAdminPassword(vm_id=VM, request_id=REQ, username="warren-1", password=PASSWORD)
    assert PASSWORD not in repr(cmd)


def test_resize_vm_is_read_field_by_field():
    cmd = messages.parse(
        _body(
            "resize-vm",
            **{"vm-id": VM, "request-id": REQ, "memory-mb": 1024, "vcpus": 2, "disk-gb": 8},
        )
    )
    assert cmd == ResizeVM(vm_id=VM, request_id=REQ, memory_mb=1024, vcpus=2, disk_gb=8)


def test_restart_vm_takes_an_optional_request_id_in_canonical_form():
    assert messages.parse(_body("restart-vm", **{"vm-id": VM})) == VMCommand("restart-vm", VM)
    cmd = messages.parse(_body("restart-vm", **{"vm-id": VM, "request-id": REQ.upper()}))
    assert cmd == VMCommand("restart-vm", VM, request_id=REQ)


def test_the_request_id_is_optional_on_the_console_commands():
    cmd = messages.parse(
        _body("resize-vm", **{"vm-id": VM, "memory-mb": 512, "vcpus": 1, "disk-gb": 4})
    )
    assert isinstance(cmd, ResizeVM) and cmd.request_id == ""


def test_the_shops_builders_round_trip_through_the_hosts_parser():
    request_id = uuid.uuid4()
    assert messages.parse(
        messages.encode(
            messages.set_admin_password_body(
                vm_id=VM, request_id=request_id, username="warren-1", password=PASSWORD
            )
        )
    ) == SetAdminPassword(VM, str(request_id), "warren-1", PASSWORD)
    assert messages.parse(
        messages.encode(
            messages.resize_vm_body(
                vm_id=VM, request_id=str(request_id), memory_mb=2048, vcpus=4, disk_gb=20
            )
        )
    ) == ResizeVM(VM, str(request_id), 2048, 4, 20)
    assert messages.parse(
        messages.encode(messages.restart_vm_body(vm_id=VM, request_id=request_id))
    ) == VMCommand("restart-vm", VM, request_id=str(request_id))


@pytest.mark.parametrize(
    "command,options,reason",
    [
        ("set-admin-password", {"request-id": REQ, "admin": {}}, "vm-id is required"),
        ("set-admin-password", {"vm-id": VM}, "options.admin is required"),
        ("set-admin-password", {"vm-id": VM, "admin": "x"}, "admin must be an object"),
        (
            "set-admin-password",
            {"vm-id": VM, "admin": {"username": "guest", "password": PASSWORD}},
            "not be guest",
        ),
        (
            "set-admin-password",
            {"vm-id": VM, "admin": {"username": "u1", "password": "short"}},
            "12-128 characters of",
        ),
        (
            "set-admin-password",
            {"vm-id": VM, "admin": {"username": "u1", "password": "has a space in it"}},
            "12-128 characters of",
        ),
        (
            "set-admin-password",
            {"vm-id": VM, "request-id": "nope", "admin": {"username": "u1", "password": PASSWORD}},
            "request-id must be a UUID",
        ),
        ("resize-vm", {"vm-id": VM, "vcpus": 1, "disk-gb": 4}, "memory-mb is required"),
        ("resize-vm", {"vm-id": VM, "memory-mb": 512, "disk-gb": 4}, "vcpus is required"),
        ("resize-vm", {"vm-id": VM, "memory-mb": 512, "vcpus": 1}, "disk-gb is required"),
        (
            "resize-vm",
            {"vm-id": VM, "memory-mb": 100, "vcpus": 1, "disk-gb": 4},
            "memory-mb must be between 256 and 16384",
        ),
        (
            "resize-vm",
            {"vm-id": VM, "memory-mb": 512, "vcpus": 9, "disk-gb": 4},
            "vcpus must be between 1 and 8",
        ),
        (
            "resize-vm",
            {"vm-id": VM, "memory-mb": 512, "vcpus": 1, "disk-gb": 0},
            "disk-gb must be between 1 and 200",
        ),
        (
            "resize-vm",
            {"vm-id": VM, "memory-mb": True, "vcpus": 1, "disk-gb": 4},
            "memory-mb must be an integer",
        ),
        (
            "resize-vm",
            {"vm-id": "../x", "memory-mb": 512, "vcpus": 1, "disk-gb": 4},
            "vm-id must match",
        ),
        ("restart-vm", {"vm-id": VM, "request-id": 7}, "request-id must be a UUID"),
        ("restart-vm", {"vm-id": VM, "request-id": "x" * 100}, "request-id must be a UUID"),
    ],
)
def test_bad_console_commands_are_rejected_with_a_reason(command, options, reason):
    with pytest.raises(Rejected, match=reason) as info:
        messages.parse(_body(command, **options))
    assert PASSWORD not in info.value.reason


def test_a_rejected_rotation_never_echoes_the_password():
    with pytest.raises(Rejected) as info:
        messages.parse(
            _body(
                "set-admin-password",
                **{"vm-id": VM, "admin": {"username": "a b", "password": PASSWORD}},
            )
        )
    assert PASSWORD not in info.value.reason


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from([VM, REQ, PASSWORD, "warren-1", "\x00", "\ud800", 512, 4, 1]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["username", "password", "x"]) | st.text(max_size=8), inner, max_size=3
        )
    ),
    max_leaves=10,
)
_console_options = st.dictionaries(
    st.sampled_from(["vm-id", "request-id", "admin", "memory-mb", "vcpus", "disk-gb", "kill", "x"]),
    _values,
    max_size=7,
)


def _dump(value) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from(["set-admin-password", "resize-vm", "restart-vm"]),
    options=_console_options,
)
@example(command="resize-vm", options={"vm-id": VM, "memory-mb": 512, "vcpus": 1, "disk-gb": 4})
@example(
    command="set-admin-password",
    options={"vm-id": VM, "admin": {"username": "warren-1", "password": PASSWORD}},
)
def test_any_console_body_is_a_command_or_rejected(command, options):
    body = _dump({"version": 1, "command": command, "options": options})
    try:
        cmd = messages.parse(body)
    except Rejected as exc:
        assert exc.reason and isinstance(exc.reason, str)
        assert PASSWORD not in exc.reason
        return
    assert isinstance(cmd, SetAdminPassword | ResizeVM | VMCommand | CreateVM | ListVMs)
    assert cmd.command == command


@settings(max_examples=100, deadline=None)
@given(
    request_id=st.uuids(),
    username=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z").filter(lambda u: u != "guest"),
    password=st.from_regex(messages.PASSWORD_RE, fullmatch=True),
    memory_mb=st.integers(256, 16384),
    vcpus=st.integers(1, 8),
    disk_gb=st.integers(1, 200),
)
def test_any_console_command_the_shop_builds_is_read_back_unchanged(
    request_id, username, password, memory_mb, vcpus, disk_gb
):
    rotation = messages.parse(
        messages.encode(
            messages.set_admin_password_body(
                vm_id=VM, request_id=request_id, username=username, password=password
            )
        )
    )
    assert rotation == SetAdminPassword(VM, str(request_id), username, password)
    resize = messages.parse(
        messages.encode(
            messages.resize_vm_body(
                vm_id=VM, request_id=request_id, memory_mb=memory_mb, vcpus=vcpus, disk_gb=disk_gb
            )
        )
    )
    assert resize == ResizeVM(VM, str(request_id), memory_mb, vcpus, disk_gb)


# -- events ---------------------------------------------------------------------------------------


def _event(type_, **fields):
    return messages.encode_event(
        messages.event(type_, instance_id=VM, host_id="host-a", seq=9, **fields)
    )


def test_command_done_of_a_resize_carries_the_new_sizes():
    event = messages.parse_event(
        _event(
            "instance.command_done",
            command="resize-vm",
            request_id=REQ,
            memory_mb=2048,
            vcpus=2,
            disk_gb=20,
        )
    )
    assert event.is_instance_event
    assert (event.command, event.request_id, event.memory_mb, event.vcpus, event.disk_gb) == (
        "resize-vm",
        uuid.UUID(REQ),
        2048,
        2,
        20,
    )


def test_command_done_of_a_rotation_has_no_sizes_and_no_password():
    event = messages.parse_event(
        _event("instance.command_done", command="set-admin-password", request_id=REQ)
    )
    assert (event.command, event.request_id, event.memory_mb, event.reason) == (
        "set-admin-password",
        uuid.UUID(REQ),
        0,
        "",
    )


def test_command_failed_carries_the_reason():
    event = messages.parse_event(
        _event(
            "instance.command_failed",
            command="resize-vm",
            request_id=REQ,
            reason="the disk only grows: 4 GB now, 2 GB asked",
        )
    )
    assert (event.type, event.command, event.request_id, event.reason) == (
        "instance.command_failed",
        "resize-vm",
        uuid.UUID(REQ),
        "the disk only grows: 4 GB now, 2 GB asked",
    )


def test_ready_reads_the_runtime_and_goes_without_it():
    ready = {
        "management_url": "http://127.0.0.1:1/",
        "amqp_url": "amqp://u@127.0.0.1:2/",
    }
    event = messages.parse_event(
        _event(
            "instance.ready",
            **ready,
            runtime={
                "rabbitmq_version": "4.0.5",
                "erlang_version": "26.2.5",
                "node": "rabbit@vm-0b6c3f9e-3c2",
                "later": "ignored",
            },
        )
    )
    assert (event.rabbitmq_version, event.erlang_version, event.node) == (
        "4.0.5",
        "26.2.5",
        "rabbit@vm-0b6c3f9e-3c2",
    )
    partial = messages.parse_event(_event("instance.ready", **ready, runtime={"node": "rabbit@x"}))
    assert (partial.rabbitmq_version, partial.node) == ("", "rabbit@x")
    bare = messages.parse_event(_event("instance.ready", **ready))
    assert (bare.rabbitmq_version, bare.erlang_version, bare.node) == ("", "", "")


def _raw(type_, **fields):
    base = {"version": 1, "type": type_, "host_id": "host-a", "instance_id": VM, "seq": 1}
    return json.dumps({**base, **fields}).encode()


_READY = {"management_url": "http://127.0.0.1:1/", "amqp_url": "amqp://u@127.0.0.1:2/"}


@pytest.mark.parametrize(
    "body,reason",
    [
        (_raw("instance.command_done"), "command must be a non-empty string"),
        (_raw("instance.command_done", command=""), "command must be a non-empty string"),
        (_raw("instance.command_done", command="Rm -rf"), "command must be a command name"),
        (
            _raw("instance.command_done", command="resize-vm", request_id="x"),
            "request_id must be a UUID",
        ),
        (_raw("instance.command_done", command="resize-vm", request_id=5), "request_id must be"),
        (_raw("instance.command_done", command="resize-vm", memory_mb=-1), "memory_mb must be"),
        (_raw("instance.command_done", command="resize-vm", memory_mb=10**6), "memory_mb must be"),
        (_raw("instance.command_done", command="resize-vm", vcpus=9), "vcpus must be"),
        (_raw("instance.command_done", command="resize-vm", disk_gb="4"), "disk_gb must be"),
        (_raw("instance.command_failed", command="resize-vm", reason=["x"]), "reason must be"),
        (_raw("instance.command_failed", command="resize-vm", reason="x" * 4001), "at most 4000"),
        (_raw("instance.ready", **_READY, runtime="4.0.5"), "runtime must be an object"),
        (_raw("instance.ready", **_READY, runtime={"node": 5}), "node must be a string"),
        (
            _raw("instance.ready", **_READY, runtime={"rabbitmq_version": "v" * 101}),
            "at most 100",
        ),
        (
            _raw("instance.ready", **_READY, runtime={"erlang_version": "a\x00b"}),
            "NUL byte",
        ),
    ],
)
def test_hostile_console_events_are_malformed_with_a_reason(body, reason):
    with pytest.raises(MalformedEvent, match=reason):
        messages.parse_event(body)


@settings(max_examples=300, deadline=None)
@given(
    type_=st.sampled_from(["instance.command_done", "instance.command_failed", "instance.ready"]),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "command",
                "request_id",
                "memory_mb",
                "vcpus",
                "disk_gb",
                "reason",
                "runtime",
                "management_url",
                "amqp_url",
            ]
        ),
        _values
        | st.dictionaries(
            st.sampled_from(["rabbitmq_version", "erlang_version", "node"]), _values, max_size=3
        ),
        max_size=6,
    ),
)
@example(type_="instance.ready", fields={**_READY, "runtime": {"node": "\ud800"}})
def test_any_console_event_is_an_event_or_malformed(type_, fields):
    body = _dump(
        {"version": 1, "type": type_, "host_id": "h", "instance_id": VM, "seq": 1, **fields}
    )
    try:
        event = messages.parse_event(body)
    except MalformedEvent as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return
    assert isinstance(event, Event) and event.type == type_


@settings(max_examples=100, deadline=None)
@given(
    command=st.sampled_from(["set-admin-password", "resize-vm", "restart-vm"]),
    request_id=st.uuids(),
    memory_mb=st.integers(256, 16384),
    vcpus=st.integers(1, 8),
    disk_gb=st.integers(1, 200),
    reason=st.text(max_size=300).filter(lambda t: "\x00" not in t),
    runtime=st.fixed_dictionaries(
        {},
        optional={
            "rabbitmq_version": st.text(max_size=100).filter(lambda t: "\x00" not in t),
            "erlang_version": st.text(max_size=100).filter(lambda t: "\x00" not in t),
            "node": st.text(max_size=100).filter(lambda t: "\x00" not in t),
        },
    ),
)
def test_any_outcome_the_host_builds_is_read_back_by_the_shop(
    command, request_id, memory_mb, vcpus, disk_gb, reason, runtime
):
    sizes = {"memory_mb": memory_mb, "vcpus": vcpus, "disk_gb": disk_gb}
    done = messages.parse_event(
        _event("instance.command_done", command=command, request_id=str(request_id), **sizes)
    )
    assert (done.command, done.request_id, done.memory_mb, done.vcpus, done.disk_gb) == (
        command,
        request_id,
        memory_mb,
        vcpus,
        disk_gb,
    )
    failed = messages.parse_event(
        _event(
            "instance.command_failed", command=command, request_id=str(request_id), reason=reason
        )
    )
    assert (failed.command, failed.request_id, failed.reason) == (command, request_id, reason)
    ready = messages.parse_event(_event("instance.ready", **_READY, runtime=runtime))
    for name in ("rabbitmq_version", "erlang_version", "node"):
        assert getattr(ready, name) == runtime.get(name, "")
