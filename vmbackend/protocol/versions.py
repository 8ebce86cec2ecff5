"""The RabbitMQ versions Warren sells: one definition for the shop (plan choices) and the images.

Each version is its own image, named `rabbitmq-<version>`, built from the Debian release that ships
it. `rabbitmq` (no version) is the name the 3.10 image had before versions were named; it still
builds the 3.10 recipe, so instances created under that name can be started again (docs/images.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RabbitVersion:
    version: str  # "4.0": what plans and the pricing page name
    image: str  # the image that runs it
    debian_suite: str  # the Debian release whose rabbitmq-server package it is


VERSIONS: tuple[RabbitVersion, ...] = (
    RabbitVersion("4.0", "rabbitmq-4.0", "trixie"),
    RabbitVersion("3.10", "rabbitmq-3.10", "bookworm"),
)
DEFAULT_VERSION = "4.0"
# Image names from before the version was part of the name, and the version they build.
LEGACY_IMAGES: dict[str, str] = {"rabbitmq": "3.10"}

CHOICES: list[tuple[str, str]] = [(v.version, f"RabbitMQ {v.version}") for v in VERSIONS]


def by_version(version: str) -> RabbitVersion:
    for v in VERSIONS:
        if v.version == version:
            return v
    raise KeyError(f"unknown RabbitMQ version {version!r}; known: {[v.version for v in VERSIONS]}")


def image_for(version: str) -> str:
    """The image name a VM of this RabbitMQ version boots."""
    return by_version(version).image


def for_image(name: str) -> RabbitVersion | None:
    """The version an image name builds (legacy names included), None for other images."""
    for v in VERSIONS:
        if v.image == name:
            return v
    legacy = LEGACY_IMAGES.get(name)
    return by_version(legacy) if legacy else None
