"""Parsing one setting's raw text for Config (vmbackend/host/config.py): each names the setting
in its error. Kept apart so the configuration object stays readable."""

from __future__ import annotations

import re
from pathlib import Path

from vmbackend.host.pool import PoolEntry, parse_pool
from vmbackend.machine.simulated import parse_boot_seconds

BROKER_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the setting."""


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _boot_seconds(raw: str) -> tuple[float, float]:
    try:
        return parse_boot_seconds(raw)
    except ValueError as exc:
        raise ConfigError(f"sim_boot_seconds: {exc}") from None


def _metrics_interval(raw: str) -> float:
    """0 turns sampling off; otherwise 0.1 s (tests) to a day."""
    value = _float("metrics_interval", raw, 0, 86400)
    if 0 < value < 0.1:
        raise ConfigError(f"metrics_interval must be 0 (off) or at least 0.1, got {value}")
    return value


def _port_range(raw: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)-(\d+)", raw.strip())
    if not match:
        raise ConfigError(f"port_range must look like 20000-29999, got {raw!r}")
    low, high = int(match[1]), int(match[2])
    if not 1024 <= low < high <= 65535:
        raise ConfigError(f"port_range must be inside 1024-65535 with low < high, got {raw!r}")
    return low, high


def _broker_ca(raw: str) -> str:
    if raw and not Path(raw).expanduser().is_file():
        raise ConfigError(f"broker_ca must be a PEM file, got {raw!r}")
    return str(Path(raw).expanduser()) if raw else ""


def _senders(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if not names:
        raise ConfigError("command_senders must name at least one broker user")
    for name in names:
        if not BROKER_USER_RE.fullmatch(name):
            raise ConfigError(f"command_senders: {name!r} is not a broker user name")
    return names


def _pool(raw: str) -> tuple[PoolEntry, ...]:
    try:
        return parse_pool(raw)
    except ValueError as exc:
        raise ConfigError(f"pool: {exc}") from None
