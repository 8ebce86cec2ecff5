import argparse
import os
from pathlib import Path

import pytest

from vmbackend.host import config
from vmbackend.host.config import ConfigError
from vmbackend.protocol.capacity import default_disk_gb


def test_it_has_safe_defaults():
    cfg = config.load(env={"WARREN_HOST_ID": "host-a"})
    assert cfg.host_id == "host-a"
    assert cfg.amqp_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert cfg.bind_address == "127.0.0.1"
    assert cfg.advertised_host == "127.0.0.1"
    assert cfg.network == "user"
    assert cfg.accel == "auto"
    assert cfg.boot_deadline == 1500
    assert cfg.heartbeat_interval == 15
    assert cfg.restore is True
    assert cfg.image_dir == Path("~/.cache/warren/images").expanduser()
    assert cfg.state_dir == Path("~/.local/state/warren/vmbackend/host-a").expanduser()


def test_host_id_defaults_to_the_hostname():
    assert config.load(env={}).host_id


def test_environment_sets_every_setting(tmp_path):
    cfg = config.load(
        env={
            "WARREN_HOST_ID": "h1",
            "WARREN_AMQP_URL": "amqp://u:p@127.0.0.1:5673/v",
            "WARREN_CAPACITY": "3",
            "WARREN_IMAGE_DIR": str(tmp_path / "img"),
            "WARREN_STATE_DIR": str(tmp_path / "st"),
            "WARREN_BIND_ADDRESS": "127.0.0.2",
            "WARREN_ADVERTISED_HOST": "vm.example.test",
            "WARREN_PORT_RANGE": "30000-30009",
            "WARREN_NETWORK": "bridge",
            "WARREN_BRIDGE": "br-test",
            "WARREN_ACCEL": "tcg",
            "WARREN_BOOT_DEADLINE": "120",
            "WARREN_HEARTBEAT_INTERVAL": "0.5",
            "WARREN_STOP_TIMEOUT": "5",
            "WARREN_RESTORE": "off",
        }
    )
    assert cfg.restore is False
    assert (cfg.capacity, cfg.port_min, cfg.port_max) == (3, 30000, 30009)
    assert cfg.state_dir == tmp_path / "st"
    assert cfg.image_dir == tmp_path / "img"
    assert (cfg.network, cfg.bridge, cfg.accel) == ("bridge", "br-test", "tcg")
    assert cfg.advertised_host == "vm.example.test"
    assert (cfg.boot_deadline, cfg.heartbeat_interval, cfg.stop_timeout) == (120, 0.5, 5)


def test_capacity_by_resources_is_configured_or_derived_from_the_machine(tmp_path):
    cfg = config.load(
        env={
            "WARREN_HOST_ID": "h",
            "WARREN_HOST_MEMORY_MB": "2048",
            "WARREN_HOST_CPUS": "3",
            "WARREN_CPU_OVERCOMMIT": "2.5",
            "WARREN_HOST_DISK_GB": "40",
            "WARREN_FALLBACK_PAUSE": "0.5",
        }
    )
    assert (cfg.host_memory_mb, cfg.host_cpus, cfg.cpu_overcommit) == (2048, 3, 2.5)
    assert (cfg.host_disk_gb, cfg.fallback_pause) == (40, 0.5)
    derived = config.load(env={"WARREN_HOST_ID": "h", "WARREN_STATE_DIR": str(tmp_path / "s")})
    assert derived.host_cpus == (os.cpu_count() or 1)
    assert derived.cpu_overcommit == 4
    assert derived.host_disk_gb == default_disk_gb(tmp_path)
    for var, value in (("WARREN_CPU_OVERCOMMIT", "0"), ("WARREN_HOST_DISK_GB", "-1")):
        with pytest.raises(config.ConfigError):
            config.load(env={"WARREN_HOST_ID": "h", var: value})


def test_metrics_default_to_every_30_s_and_0_turns_them_off():
    cfg = config.load(env={"WARREN_HOST_ID": "h"})
    assert (cfg.metrics_interval, cfg.metrics_timeout, cfg.metrics_workers) == (30, 5, 8)
    off = config.load(env={"WARREN_HOST_ID": "h", "WARREN_METRICS_INTERVAL": "0"})
    assert off.metrics_interval == 0
    fast = config.load(
        env={
            "WARREN_HOST_ID": "h",
            "WARREN_METRICS_INTERVAL": "0.5",
            "WARREN_METRICS_TIMEOUT": "1.5",
            "WARREN_METRICS_WORKERS": "2",
        }
    )
    assert (fast.metrics_interval, fast.metrics_timeout, fast.metrics_workers) == (0.5, 1.5, 2)


def test_a_flag_overrides_the_environment():
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    flags = parser.parse_args(["--capacity", "7", "--host-id", "flagged"])
    cfg = config.load(env={"WARREN_CAPACITY": "1", "WARREN_HOST_ID": "env"}, flags=flags)
    assert (cfg.capacity, cfg.host_id) == (7, "flagged")


@pytest.mark.parametrize(
    "var,value,needle",
    [
        ("WARREN_CAPACITY", "many", "capacity"),
        ("WARREN_CAPACITY", "-1", "capacity"),
        ("WARREN_PORT_RANGE", "80-90", "port_range"),
        ("WARREN_PORT_RANGE", "30000", "port_range"),
        ("WARREN_NETWORK", "nat", "network"),
        ("WARREN_ACCEL", "hvf", "accel"),
        ("WARREN_BIND_ADDRESS", "localhost", "bind_address"),
        ("WARREN_HOST_ID", "../etc", "host_id"),
        ("WARREN_BRIDGE", "a-very-long-bridge-name", "bridge"),
        ("WARREN_AMQP_URL", "http://x", "amqp_url"),
        ("WARREN_BOOT_DEADLINE", "0", "boot_deadline"),
        ("WARREN_RESTORE", "maybe", "restore"),
        ("WARREN_METRICS_INTERVAL", "0.01", "metrics_interval"),
        ("WARREN_METRICS_INTERVAL", "-1", "metrics_interval"),
        ("WARREN_METRICS_TIMEOUT", "0", "metrics_timeout"),
        ("WARREN_METRICS_WORKERS", "0", "metrics_workers"),
    ],
)
def test_it_refuses_bad_values_naming_the_setting(var, value, needle):
    env = {"WARREN_HOST_ID": "h"}
    env[var] = value
    with pytest.raises(ConfigError, match=needle):
        config.load(env=env)


def test_the_redacted_url_hides_the_password():
    cfg = config.load(
        env={"WARREN_HOST_ID": "h", "WARREN_AMQP_URL": "amqp://bob:s3cret@127.0.0.1/v"}
    )
    assert "s3cret" not in cfg.redacted_amqp_url()
    assert cfg.redacted_amqp_url() == "amqp://bob:***@127.0.0.1/v"
