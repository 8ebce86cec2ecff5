"""The in-guest TLS install script (guest_install.INSTALL) writes without a symlink race (issue
20, section 5): run for real with this machine's /bin/sh as root, on a copy of the guest's
folders in a temporary directory, where the rabbitmq user "planted" symlinks to files outside.
Everything up to the Erlang step is the product's text; only the two folder paths are moved.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from vmbackend.tls import authority, guest_install


def _rabbitmq_uid() -> int | None:
    try:
        return pwd.getpwnam("rabbitmq").pw_uid
    except KeyError:
        return None


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or _rabbitmq_uid() is None,
    reason="the script runs as root in the guest and chowns to the rabbitmq user",
)


@pytest.fixture(scope="module")
def leaf() -> authority.Leaf:
    root_key, root = authority.create_root()
    key, cert = authority.create_intermediate(root_key, root, "host-a")
    return authority.issue(authority.Issuer(key, cert, root), ["vm.warren.localhost"])


def _script(etc: Path) -> str:
    """The product's script with the guest's folders under `etc`, ending before the Erlang step
    (no node here)."""
    text = guest_install.INSTALL
    text = text.replace(f"d={guest_install.TLS_DIR}\n", f"d={etc}/rabbitmq/tls\n")
    conf = guest_install.CONF.replace("/etc", str(etc), 1)
    text = text.replace(f"conf={guest_install.CONF}\n", f"conf={conf}\n")
    head, sep, _erlang = text.partition("cd /var/lib/rabbitmq\n")
    assert sep and head.count(str(etc)) == 2, "the script's folder lines changed"
    return head + 'echo "$0"\n'


def _run(etc: Path, leaf: authority.Leaf) -> subprocess.CompletedProcess[bytes]:
    cacert = leaf.chain_pem[len(leaf.cert_pem) :] + leaf.ca_pem
    return subprocess.run(
        ["/bin/sh", "-c", _script(etc), "reload", "1", "halt(0).", "# drop-in\n"],
        input=leaf.key_pem + leaf.cert_pem + cacert,
        capture_output=True,
        timeout=60,
    )


def _guest(tmp_path: Path) -> tuple[Path, Path]:
    """/etc/rabbitmq as the image leaves it (owned by rabbitmq, like its tls folder from an
    earlier install) and a victim file outside that only root may change."""
    etc = tmp_path.resolve() / "etc"
    (etc / "rabbitmq" / "tls").mkdir(parents=True)
    (etc / "rabbitmq" / "conf.d").mkdir()
    uid = _rabbitmq_uid()
    assert uid is not None
    for folder in (etc / "rabbitmq", etc / "rabbitmq" / "tls", etc / "rabbitmq" / "conf.d"):
        os.chown(folder, uid, uid)
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o600)
    return etc, victim


def _unchanged(victim: Path) -> None:
    info = victim.stat()
    assert victim.read_text() == "root:secret\n"
    assert (info.st_uid, info.st_mode & 0o777) == (0, 0o600)


def test_the_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(
        [shellcheck, "-s", "dash", "-"], input=guest_install.INSTALL.encode(), capture_output=True
    )
    assert done.returncode == 0, done.stdout.decode()


@needs_root
def test_planted_symlinks_are_replaced_never_followed(tmp_path: Path, leaf: authority.Leaf) -> None:
    etc, victim = _guest(tmp_path)
    tls = etc / "rabbitmq" / "tls"
    # Every name the old script opened, chowned or chmodded, and every final name.
    for name in ("key.pem.new", "cert.pem.new", "cacert.pem.new", "key.pem", "cert.pem"):
        (tls / name).symlink_to(victim)
    conf = etc / "rabbitmq" / "conf.d" / "90-warren-tls.conf"
    Path(f"{conf}.new").symlink_to(victim)
    conf.symlink_to(victim)
    done = _run(etc, leaf)
    assert done.returncode == 0, done.stderr.decode()
    _unchanged(victim)
    for name, mode in (("key.pem", 0o400), ("cert.pem", 0o444), ("cacert.pem", 0o444)):
        path = tls / name
        assert not path.is_symlink() and path.is_file()
        assert (path.stat().st_uid, path.stat().st_mode & 0o777) == (_rabbitmq_uid(), mode)
    assert (tls / "key.pem").read_bytes() == leaf.key_pem
    assert not conf.is_symlink() and conf.read_text() == "# drop-in\n"
    # The TLS folder is root's now: the rabbitmq user can read it, not plant names in it.
    assert (tls.stat().st_uid, tls.stat().st_mode & 0o777) == (0, 0o750)
    assert sorted(p.name for p in tls.iterdir()) == ["cacert.pem", "cert.pem", "key.pem"]


@needs_root
@pytest.mark.parametrize("folder", ["tls", "conf.d"])
def test_a_folder_swapped_for_a_symlink_is_refused(
    tmp_path: Path, leaf: authority.Leaf, folder: str
) -> None:
    etc, victim = _guest(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "key.pem").symlink_to(victim)
    (elsewhere / "90-warren-tls.conf").symlink_to(victim)
    swapped = etc / "rabbitmq" / folder
    swapped.rmdir()
    swapped.symlink_to(elsewhere)
    done = _run(etc, leaf)
    assert done.returncode == 3
    assert b"is not a real folder" in done.stderr
    _unchanged(victim)
    assert elsewhere.stat().st_uid == 0 and (elsewhere / "key.pem").is_symlink()
