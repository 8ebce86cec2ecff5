"""vmbackend/files.py: the one atomic write used by the state files and the image files."""

import json
import os
import stat

import pytest

from vmbackend.files import write_atomic, write_json_atomic


def test_it_replaces_the_content(tmp_path):
    target = tmp_path / "f"
    write_atomic(target, b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_it_sets_the_mode_whatever_the_umask(tmp_path, mode):
    old_umask = os.umask(0o077)
    try:
        write_atomic(tmp_path / "f", b"x", mode=mode)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == mode


def test_a_secret_is_private_by_default(tmp_path):
    write_atomic(tmp_path / "f", b"secret")
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


def test_it_creates_the_folder(tmp_path):
    write_atomic(tmp_path / "a" / "b" / "f", b"x")
    assert (tmp_path / "a" / "b" / "f").read_bytes() == b"x"


def test_a_failed_write_leaves_the_old_content_and_no_temp_file(tmp_path):
    target = tmp_path / "f"
    write_atomic(target, b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]  # fails after the temp file exists
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_a_failed_rename_leaves_no_temp_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "inside").write_text("x")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "d", b"data")  # a non-empty folder cannot be replaced by a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert (tmp_path / "d" / "inside").read_text() == "x"


def test_json_is_sorted_indented_and_newline_terminated(tmp_path):
    write_json_atomic(tmp_path / "f.json", {"b": 1, "a": [1, 2]})
    text = (tmp_path / "f.json").read_text()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644


def test_unserialisable_json_keeps_the_old_file(tmp_path):
    target = tmp_path / "f.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
