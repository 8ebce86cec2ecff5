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
