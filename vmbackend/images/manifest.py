"""Image folders and their `image.json` manifest (docs/images.md).

Everything that turns an image *name* into a path goes through here, so a hostile name such as
`../../etc/passwd` can never reach the file system.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One implementation (vmbackend/files.py); accel.py and build.py call it through this module.
from vmbackend.files import write_json_atomic

FORMAT = 1
MANIFEST = "image.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
GUEST_KINDS = ("rabbitmq", "tiny")


class ImageError(Exception):
    """An image name, folder or manifest is invalid or missing."""


def default_images_root() -> Path:
    """`$WARREN_IMAGE_DIR`, else `~/.cache/warren/images`."""
    env = os.environ.get("WARREN_IMAGE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "warren" / "images"


def validate_name(name: object) -> str:
    """Return `name` if it is a valid image name, else raise ImageError."""
    # The pattern admits no "/" and no leading ".", so a valid name is always one plain path part.
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ImageError("image name must match [a-z0-9][a-z0-9._-]{0,63}")
    return name


def image_dir(images_root: Path, name: str) -> Path:
    """The folder of image `name` (validated) under `images_root`."""
    return Path(images_root) / validate_name(name)


def resolve_inside(folder: Path, relative: object) -> Path:
    """`folder/relative`, refusing absolute paths, `..` and symlinks that leave `folder`."""
    if (
        not isinstance(relative, str)
        or not relative
        or relative.startswith("/")
        or "\x00" in relative
    ):
        raise ImageError(f"bad file name in manifest: {relative!r}")
    base = Path(folder).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise ImageError(f"file {relative!r} leaves the image folder")
    return target


@dataclass(frozen=True)
class Guest:
    kind: str
    management_port: int = 15672
    amqp_port: int | None = 5672
    # Listens on amqps/https from its first start with a throw-away server.pem and Erlang's PEM
    # cache off (docs/tls.md); older images get TLS at run time (tls/guest_install.install).
    tls_baked: bool = False


@dataclass(frozen=True)
class Manifest:
    """A validated image.json, with its files resolved inside the image folder."""

    name: str
    folder: Path
    distro: str
    recipe_hash: str
    built_at: str
    kernel: Path
    initrd: Path | None
    disk: Path | None
    append: str
    guest: Guest
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def saved_dir(self) -> Path:
        return self.folder / "saved"


def _require(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise ImageError(f"image.json: {key!r} missing or of the wrong type")
    return value


def parse(data: object, folder: Path) -> Manifest:
    """Validate a decoded image.json whose image lives in `folder`."""
    if not isinstance(data, dict):
        raise ImageError("image.json: not a JSON object")
    if data.get("format") != FORMAT:
        raise ImageError(f"image.json: unsupported format {data.get('format')!r}")
    name = validate_name(data.get("name"))
    if Path(folder).name != name:
        raise ImageError(f"image.json: name {name!r} does not match folder {Path(folder).name!r}")
    guest_raw = _require(data, "guest", dict)
    kind = guest_raw.get("kind")
    if kind not in GUEST_KINDS:
        raise ImageError(f"image.json: guest.kind must be one of {', '.join(GUEST_KINDS)}")
    ports: dict[str, int] = {}
    for key in ("management_port", "amqp_port"):
        value = guest_raw.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
            raise ImageError(f"image.json: guest.{key} must be a port number")
        ports[key] = value
    if guest_raw.get("tls") not in (None, "baked"):
        raise ImageError('image.json: guest.tls must be "baked" or absent')
    initrd = data.get("initrd")
    disk = data.get("disk")
    return Manifest(
        name=name,
        folder=Path(folder),
        distro=str(data.get("distro") or ""),
        recipe_hash=_require(data, "recipe_hash", str),
        built_at=str(data.get("built_at") or ""),
        kernel=resolve_inside(folder, _require(data, "kernel", str)),
        initrd=resolve_inside(folder, initrd) if initrd is not None else None,
        disk=resolve_inside(folder, disk) if disk is not None else None,
        append=_require(data, "append", str),
        guest=Guest(
            kind=kind,
            management_port=ports.get("management_port", Guest.management_port),
            amqp_port=ports.get("amqp_port"),  # no default: an image without AMQP (tiny) has none
            tls_baked=guest_raw.get("tls") == "baked",
        ),
        raw=data,
    )


def load(images_root: Path, name: str) -> Manifest:
    """Load and validate image `name`; its kernel (and initrd/disk, when named) must exist."""
    folder = image_dir(images_root, name)
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageError(f"image {name!r} not found under {images_root}") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"image {name!r}: unreadable image.json: {exc}") from exc
    manifest = parse(data, folder)
    for file in (manifest.kernel, manifest.initrd, manifest.disk):
        if file is not None and not file.is_file():
            raise ImageError(f"image {name!r}: missing file {file.name}")
    return manifest


def available(images_root: Path) -> list[str]:
    """Names of the images under `images_root` that have a manifest."""
    root = Path(images_root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if NAME_RE.fullmatch(p.name) and (p / MANIFEST).is_file()
    )


def write_manifest(folder: Path, data: dict[str, Any]) -> Manifest:
    """Validate `data` for image folder `folder` and write it as image.json atomically."""
    data = {"format": FORMAT, **data}
    manifest = parse(data, Path(folder))
    write_json_atomic(Path(folder) / MANIFEST, data)
    return manifest
