"""Secrets and the SQLite database are created 0600 from their first byte (store/private_files.py),
checked in fresh interpreters with the usual umask 022: an audit hook stats each new file at every
step after its creation, so a file created readable and tightened later is caught in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs in the child: records the mode of every file under the folder at each file event
# (os.chmod, os.link, os.rename) *before* it happens, and then the final modes.
WATCH = """
import json, os, sys
folder = sys.argv[1]
seen = []
def hook(event, args):
    if event in ("os.chmod", "os.link", "os.rename") and str(args[0]).startswith(folder):
        try:
            seen.append((event, oct(os.stat(args[0]).st_mode & 0o777)))
        except OSError:
            pass
sys.addaudithook(hook)
"""


def _child(code: str, folder: Path, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", f"import os; os.umask(0o022)\n{WATCH}\n{code}", str(folder)],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "store.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_generated_secret_is_never_readable_by_others(tmp_path: Path) -> None:
    code = """
from pathlib import Path
from store.private_files import local_secret
path = Path(folder) / "var" / "secrets_key"
local_secret(path)
print(json.dumps({"seen": seen, "file": oct(path.stat().st_mode & 0o777),
                  "dir": oct(path.parent.stat().st_mode & 0o777)}))
"""
    found = _child(code, tmp_path)

    assert found["seen"], "the hook saw no file event: the test would prove nothing"
    assert {mode for _event, mode in found["seen"]} == {"0o600"}, found
    assert (found["file"], found["dir"]) == ("0o600", "0o700")


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    from store.private_files import write_new_private

    target = tmp_path / "elsewhere"
    target.write_text("theirs")
    (tmp_path / "key").symlink_to(target)

    with pytest.raises(FileExistsError):
        write_new_private(tmp_path / "key", "secret")
    assert target.read_text() == "theirs"


def test_the_sqlite_database_and_its_wal_files_are_private_from_the_start(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    code = """
import django
from pathlib import Path
db = Path(folder) / "db.sqlite3"
django.setup()  # settings: the file must exist 0600 before any connection
before = oct(db.stat().st_mode & 0o777) if db.exists() else None
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE t (x integer)")
    cursor.execute("INSERT INTO t VALUES (1)")
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in db.parent.iterdir()}
    print(json.dumps({"before": before, "modes": modes}))
"""
    found = _child(code, tmp_path, DATABASE_URL=f"sqlite:///{db}")

    assert found["before"] == "0o600"
    assert found["modes"] == {
        "db.sqlite3": "0o600",
        "db.sqlite3-wal": "0o600",
        "db.sqlite3-shm": "0o600",
    }


def test_an_old_readable_database_is_tightened(tmp_path: Path) -> None:
    from store.private_files import private_sqlite_file

    db = tmp_path / "db.sqlite3"
    db.touch(mode=0o644)
    db.chmod(0o644)

    private_sqlite_file(str(db))

    assert db.stat().st_mode & 0o777 == 0o600
