import json
import os
import stat

import pytest

from vmbackend.host.state import (
    ACCEPTED,
    BOOTING,
    DELETED,
    FAILED,
    LOST,
    READY,
    STOPPED,
    TRANSITIONS,
    IllegalTransition,
    StateStore,
    VMRecord,
    can_move,
    move,
    write_atomic,
)


def _record(vm_id="vm-1", **kw):
    return VMRecord(
        vm_id=vm_id,
        image="tiny",
        memory_mb=256,
        vcpus=1,
        disk_gb=1,
        hostname="h",
        admin_username="warren-a",
        admin_password="p" * 20,
        **kw,
    )


def test_a_saved_record_loads_back_equal(tmp_path):
    store = StateStore(tmp_path)
    record = _record(
        ports={"management": 20001, "amqp": 20002},
        status=READY,
        seq=3,
        outbox=[{"type": "instance.ready", "seq": 3}],
    )
    store.save(record)
    assert store.load("vm-1") == record
    assert store.load_all() == {"vm-1": record}


def test_the_state_file_is_private(tmp_path):
    store = StateStore(tmp_path)
    store.save(_record())
    mode = stat.S_IMODE(os.stat(store.path("vm-1")).st_mode)
    assert mode == 0o600


def test_a_rewrite_leaves_no_temp_files(tmp_path):
    store = StateStore(tmp_path)
    record = _record()
    for i in range(5):
        record.seq = i
        store.save(record)
    assert [p.name for p in store.vms.iterdir()] == ["vm-1.json"]
    assert store.load("vm-1").seq == 4


def test_a_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "f.json"
    write_atomic(target, b"old")

    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_unreadable_or_misnamed_files_are_skipped(tmp_path):
    store = StateStore(tmp_path)
    store.save(_record("good"))
    (store.vms / "broken.json").write_text("{not json")
    (store.vms / "other.json").write_text(json.dumps(_record("mismatch").to_dict()))
    assert list(store.load_all()) == ["good"]


def test_remove_forgets_the_record_and_machine_folder(tmp_path):
    store = StateStore(tmp_path)
    store.save(_record())
    store.vm_dir("vm-1").mkdir()
    (store.vm_dir("vm-1") / "disk.qcow2").write_bytes(b"x")
    store.remove("vm-1")
    assert store.load("vm-1") is None
    assert not store.vm_dir("vm-1").exists()


def test_hostile_vm_ids_never_become_paths(tmp_path):
    store = StateStore(tmp_path)
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")
    with pytest.raises(ValueError):
        store.vm_dir("..")


def test_failed_and_deleted_vms_free_their_slot():
    assert _record().holds_slot()
    assert not _record(status=FAILED).holds_slot()
    assert not _record(status=DELETED).holds_slot()


def test_unknown_keys_from_a_newer_daemon_are_ignored():
    record = _record()
    assert VMRecord.from_dict(record.to_dict() | {"future_field": 1}) == record


# -- the host-side state machine
ALL = (ACCEPTED, BOOTING, READY, STOPPED, FAILED, LOST, DELETED)


def test_every_status_has_a_row_and_deleted_is_final():
    assert set(TRANSITIONS) == set(ALL)
    assert all(targets <= set(ALL) for targets in TRANSITIONS.values())
    assert TRANSITIONS[DELETED] == frozenset()
    assert TRANSITIONS[FAILED] == {DELETED}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (ACCEPTED, BOOTING),
        (ACCEPTED, FAILED),
        (BOOTING, READY),
        (BOOTING, LOST),
        (READY, STOPPED),
        (READY, LOST),
        (STOPPED, BOOTING),
        (LOST, BOOTING),
        (LOST, STOPPED),
        (STOPPED, LOST),
        (FAILED, DELETED),
        (READY, DELETED),
        (READY, BOOTING),
    ],
)
def test_allowed_changes(old, new):
    assert can_move(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (ACCEPTED, READY),
        (FAILED, BOOTING),
        (DELETED, ACCEPTED),
        (READY, ACCEPTED),
        (STOPPED, READY),
        (READY, FAILED),
        (STOPPED, FAILED),
    ],
)
def test_illegal_changes(old, new):
    assert not can_move(old, new)


def test_a_vm_that_was_ready_once_never_fails():
    assert can_move(BOOTING, FAILED)
    assert not can_move(BOOTING, FAILED, ever_ready=True)
    assert can_move(BOOTING, LOST, ever_ready=True)


def test_move_refuses_an_illegal_change_and_leaves_the_status():
    record = _record(status=FAILED)
    with pytest.raises(IllegalTransition):
        move(record, READY)
    assert record.status == FAILED
    record = _record(status=BOOTING)
    move(record, READY)
    assert (record.status, record.ever_ready) == (READY, True)


def test_a_record_from_before_ever_ready_existed_infers_it():
    old = _record(status=STOPPED).to_dict()
    del old["ever_ready"]
    assert VMRecord.from_dict(old).ever_ready
    old.update(status=ACCEPTED)
    assert not VMRecord.from_dict(old).ever_ready
    old.update(status=BOOTING, management_url="http://x/")  # a start cut off by a crash
    assert VMRecord.from_dict(old).ever_ready
