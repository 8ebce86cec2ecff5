"""Lint of the Arch recipe (no Arch mirror is reachable here, so it is never built in tests):
the package set, the files it puts into the guest (shared with the Debian recipe), the units
systemd would load, and the scripts."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vmbackend.images import arch, guest
from vmbackend.images.build import BuildError

UNIT_PARSE_ERRORS = (
    "Unknown key",
    "Unknown section",
    "Failed to parse",
    "Invalid",
    "bad unit file",
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arch-root")
    arch.render(root)
    return root


def unit_sections(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def verify_unit(path: Path) -> str:
    """systemd-analyze's complaints about a unit file's syntax (ignoring missing programs and
    units, which live in the guest, not on this host)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "\n".join(
        line
        for line in (result.stdout + result.stderr).splitlines()
        if any(e in line for e in UNIT_PARSE_ERRORS)
    )


def test_the_package_set_is_the_documented_one():
    assert arch.PACKAGES == ("base", "linux", "rabbitmq", "qemu-guest-agent")
    assert arch.ArchRecipe().packages == arch.PACKAGES
    titles = [s.title for s in arch.ArchRecipe().steps()]
    assert titles[0] == "pacstrap base linux rabbitmq qemu-guest-agent"


def test_render_writes_the_guest_contract(rendered: Path):
    for rel in (
        "usr/local/sbin/warren-firstboot",
        "usr/local/sbin/warren-restore-settings",
        "etc/systemd/system/warren-firstboot.service",
        "etc/systemd/system/rabbitmq.service.d/warren.conf",
        "etc/systemd/system/warren-qga.path",
        "etc/systemd/network/20-wired.network",
        "etc/rabbitmq/rabbitmq-env.conf",
        "etc/rabbitmq/rabbitmq.conf",
        "etc/rabbitmq/enabled_plugins",
        "etc/mkinitcpio-warren.conf",
    ):
        assert (rendered / rel).is_file(), rel
    for script in ("warren-firstboot", "warren-restore-settings"):
        mode = (rendered / "usr/local/sbin" / script).stat().st_mode
        assert stat.S_IMODE(mode) == 0o755
    assert (rendered / "etc/rabbitmq/enabled_plugins").read_text() == "[rabbitmq_management].\n"
    assert "NODENAME=rabbit@localhost" in (rendered / "etc/rabbitmq/rabbitmq-env.conf").read_text()
    assert (rendered / "etc/rabbitmq/conf.d").is_dir()
    assert (rendered / "etc/machine-id").read_text() == ""


def test_the_units_parse_and_are_wired_together(rendered: Path):
    units = rendered / "etc/systemd/system"
    firstboot = unit_sections(units / "warren-firstboot.service")
    assert firstboot["Service"]["Type"] == ["oneshot"]
    assert firstboot["Service"]["ExecStart"] == ["/usr/local/sbin/warren-firstboot apply"]
    before = " ".join(firstboot["Unit"]["Before"]).split()
    assert "rabbitmq.service" in before and "rabbitmq-server.service" in before
    dropin = unit_sections(units / "rabbitmq.service.d/warren.conf")
    assert dropin["Unit"]["Requires"] == ["warren-firstboot.service"]
    assert dropin["Service"]["ExecStartPost"] == ["-/usr/local/sbin/warren-firstboot cleanup"]
    path = unit_sections(units / "warren-qga.path")
    assert path["Path"]["PathExists"] == ["/dev/virtio-ports/org.qemu.guest_agent.0"]
    assert path["Path"]["Unit"] == ["qemu-guest-agent.service"]
    network = unit_sections(rendered / "etc/systemd/network/20-wired.network")
    assert network["Match"]["Name"] == ["en* eth*"]
    assert network["Network"]["DHCP"] == ["yes"]
    assert {"warren-qga.path", "rabbitmq.service", guest.FIRSTBOOT_UNIT} <= set(arch.ENABLE_UNITS)
    assert "systemd-networkd-wait-online.service" in arch.MASK_UNITS


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_units(rendered: Path, tmp_path: Path):
    units = rendered / "etc/systemd/system"
    for name in ("warren-firstboot.service", "warren-qga.path"):
        assert verify_unit(units / name) == "", name
    # The check itself catches a broken unit.
    broken = tmp_path / "broken.service"
    broken.write_text(
        (units / "warren-firstboot.service").read_text().replace("Type=oneshot", "Typo=oneshot")
    )
    assert "Unknown key" in verify_unit(broken)


@pytest.mark.parametrize("script", ["warren-firstboot", "warren-restore-settings"])
def test_the_scripts_are_valid_bash(rendered: Path, script: str):
    path = rendered / "usr/local/sbin" / script
    assert path.read_text().startswith("#!/bin/bash\n")
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        result = subprocess.run(
            ["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout


def test_mkinitcpio_config_loads_the_virtio_modules(rendered: Path):
    conf = rendered / "etc/mkinitcpio-warren.conf"
    out = subprocess.run(
        ["bash", "-c", 'source "$1"; echo "${MODULES[*]}|${HOOKS[*]}"', "bash", str(conf)],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    modules, hooks = out.split("|")
    assert {"virtio_pci", "virtio_mmio", "virtio_blk", "ext4"} <= set(modules.split())
    assert hooks.split()[:2] == ["base", "udev"]


def test_pacman_conf_points_at_the_configured_mirror():
    text = arch.PACMAN_CONF.format(arch=arch.ARCH, mirror="http://m.test/$repo/os/$arch")
    assert "[core]\nServer = http://m.test/$repo/os/$arch" in text
    assert "[extra]\n" in text
    assert arch.mirror_url("http://m.test/$repo/os/$arch", "core") == "http://m.test/core/os/x86_64"


def test_preflight_refuses_without_a_mirror_before_anything_else(monkeypatch):
    monkeypatch.delenv(arch.MIRROR_ENV, raising=False)
    with pytest.raises(
        BuildError, match="no Arch mirror configured/reachable: set WARREN_ARCH_MIRROR"
    ):
        arch.ArchRecipe().preflight(print)
    monkeypatch.setenv(arch.MIRROR_ENV, "ftp://m.test/$repo")
    with pytest.raises(BuildError, match="http"):
        arch.ArchRecipe().preflight(print)
    assert os.environ[arch.MIRROR_ENV]  # the check never touched the environment
