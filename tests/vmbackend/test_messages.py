import json

import pytest

from vmbackend import messages
from vmbackend.messages import CreateVM, ListVMs, Rejected, VMCommand


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
    cmd = messages.parse(_body(image="tiny", **{
        "vm-id": "0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10", "memory-mb": 1024, "vcpus": 2,
        "disk-gb": 10, "admin": {"username": "warren-3f9e1c", "password": "x" * 32},
        "limits": {"max-connections": 100, "max-queues": 200}}))
    assert cmd == CreateVM(vm_id="0b6c3f9e-3c2e-4d55-8a53-9f2d4c6d7a10", image="tiny",
                           memory_mb=1024, vcpus=2, disk_gb=10, admin_username="warren-3f9e1c",
                           admin_password="x" * 32, password_generated=False,
                           limits={"max-connections": 100, "max-queues": 200})


def test_the_password_is_not_in_the_repr():
    cmd = messages.parse(_body(image="tiny", admin={"username": "u1", "password": "secret-secret-1"}))
    assert "secret-secret-1" not in repr(cmd)


def test_vm_commands_and_list():
    assert messages.parse(_body("list-vms")) == ListVMs()
    assert messages.parse(b'{"command": "list-vms"}') == ListVMs()
    assert messages.parse(_body("stop-vm", **{"vm-id": "a1", "kill": True})) == \
        VMCommand("stop-vm", "a1", kill=True)
    for name in ("start-vm", "restart-vm", "delete-vm"):
        assert messages.parse(_body(name, **{"vm-id": "a1"})) == VMCommand(name, "a1")


@pytest.mark.parametrize("body,reason", [
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
])
def test_it_rejects_malformed_bodies_with_a_reason(body, reason):
    with pytest.raises(Rejected, match=reason):
        messages.parse(body)


@pytest.mark.parametrize("options,reason", [
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
    ({"image": "tiny", "admin": {"username": "a b", "password": "x" * 20}}, "username must match"),
    ({"image": "tiny", "admin": {"username": "guest", "password": "x" * 20}}, "not be guest"),
    ({"image": "tiny", "admin": {"username": "bob", "password": "short"}}, "12-128 printable"),
    ({"image": "tiny", "admin": {"username": "bob", "password": "has space in it"}}, "printable"),
    ({"image": "tiny", "limits": {"max-connections": -1}}, "max-connections must be an integer"),
    ({"image": "tiny", "limits": {"max-disk": 1}}, "unknown limit"),
    ({"image": "tiny", "limits": [1]}, "limits must be an object"),
])
def test_it_rejects_bad_create_vm_options(options, reason):
    with pytest.raises(Rejected, match=reason):
        messages.parse(_body(**options))


def test_a_rejection_never_echoes_the_password():
    with pytest.raises(Rejected) as info:
        messages.parse(_body(image="tiny", admin={"username": "a b", "password": "topsecret-xyz"}))
    assert "topsecret-xyz" not in info.value.reason


@pytest.mark.parametrize("options,reason", [
    ({}, "vm-id is required"),
    ({"vm-id": "../../x"}, "vm-id must match"),
    ({"vm-id": "a1", "kill": "yes"}, "kill must be true or false"),
])
def test_it_rejects_bad_vm_command_options(options, reason):
    with pytest.raises(Rejected, match=reason):
        messages.parse(_body("stop-vm", **options))


def test_replies_follow_the_prototype_format():
    assert json.loads(messages.success({"vm-id": "a"})) == {
        "execution-info": {"status": "success"}, "response": {"vm-id": "a"}}
    assert json.loads(messages.error("unknown vm-id")) == {
        "execution-info": {"status": "error", "reason": "unknown vm-id"}}


def test_events_carry_the_envelope():
    body = messages.event("instance.progress", instance_id="vm1", host_id="h", seq=3,
                          stage="guest_up")
    assert body["version"] == 1 and body["type"] == "instance.progress"
    assert (body["instance_id"], body["host_id"], body["seq"], body["stage"]) == ("vm1", "h", 3, "guest_up")
    assert body["message_id"] and body["occurred_at"].endswith("+00:00")
    assert json.loads(messages.encode_event(body)) == body
    with pytest.raises(ValueError):
        messages.event("x", instance_id=None, host_id="h", seq=1, seq_=1, type="y")


def test_a_request_body_round_trips_through_parse():
    body = messages.command("stop-vm", {"vm-id": "a1", "kill": False})
    assert messages.parse(body) == VMCommand("stop-vm", "a1")
