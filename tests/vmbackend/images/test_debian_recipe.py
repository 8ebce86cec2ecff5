"""One Debian recipe, two releases: the image name picks the suite (and so the RabbitMQ version)."""

import textwrap
from pathlib import Path

import pytest

from vmbackend.images import build
from vmbackend.images.build import BuildError
from vmbackend.images.debian import DebianRecipe, debian_mirror


def test_the_image_name_picks_the_debian_release():
    assert DebianRecipe("rabbitmq-4.0").suite == "trixie"
    assert DebianRecipe("rabbitmq-3.10").suite == "bookworm"
    assert DebianRecipe("rabbitmq").suite == "bookworm"  # the 3.10 image's name before versions
    assert DebianRecipe("anything", suite="trixie").suite == "trixie"


def test_an_unknown_name_or_suite_is_refused_before_any_work():
    with pytest.raises(BuildError, match="rabbitmq-4.0"):
        DebianRecipe("rabbitmq-9.9")
    with pytest.raises(BuildError, match="unknown Debian suite"):
        DebianRecipe("rabbitmq-4.0", suite="sid")


def test_each_release_is_its_own_recipe_but_shares_the_code():
    four, three = DebianRecipe("rabbitmq-4.0"), DebianRecipe("rabbitmq-3.10")
    assert build.recipe_hash(four) != build.recipe_hash(three)
    assert build.recipe_hash(three) == build.recipe_hash(DebianRecipe("rabbitmq"))
    assert four.source_files() == three.source_files()
    assert [s.title.split()[:2] for s in four.steps()][0] == ["debootstrap", "trixie"]
    assert [s.title.split()[:2] for s in three.steps()][0] == ["debootstrap", "bookworm"]


def test_a_bookworm_hosts_mirror_serves_trixie(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("WARREN_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(textwrap.dedent("""\
        Types: deb
        URIs: http://security.test/debian-security
        Suites: bookworm-security
        Components: main

        Types: deb
        URIs: http://mirror.test/debian
        Suites: trixie trixie-updates
        Components: main
        """))  # fmt: skip
    assert debian_mirror(tmp_path) == "http://mirror.test/debian"  # not the -security archive


def test_only_rabbitmq_4_0_bakes_its_tls_listeners_in(tmp_path: Path):
    four, three = DebianRecipe("rabbitmq-4.0"), DebianRecipe("rabbitmq-3.10")
    assert four.tls_baked and not three.tls_baked  # 3.10's OTP 25 was never measured
    ctx = build.Context(tmp_path, tmp_path, print, tmp_path / "log", "sha256:ab")
    assert four.manifest(ctx)["guest"]["tls"] == "baked"
    assert "tls" not in three.manifest(ctx)["guest"]


def test_the_throw_away_server_pem_is_a_matching_key_and_certificate_for_rabbitmq_only(
    tmp_path: Path,
):
    import stat

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from vmbackend.images import rootfs

    path = rootfs.write_throwaway_tls(tmp_path)
    assert path == tmp_path / "etc/rabbitmq/tls/server.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = path.read_bytes()
    key = serialization.load_pem_private_key(data, None)
    cert = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE") :])
    assert cert.public_key() == key.public_key()
    assert data.count(b"-----BEGIN ") == 2  # key first, then the certificate: both in one file
    # Each build makes its own; a second write replaces the read-only file.
    again = rootfs.write_throwaway_tls(tmp_path).read_bytes()
    assert again != data
