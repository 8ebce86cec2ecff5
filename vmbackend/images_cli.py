"""`python -m vmbackend image build|snapshot|list` (also `python -m vmbackend.images ...`)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from vmbackend.images import build, manifest, tiny
from vmbackend.images.arch import ArchRecipe
from vmbackend.images.debian import DebianRecipe
from vmbackend.machine import snapshot

DISTROS = ("debian", "arch")


def _recipe(name: str, distro: str) -> build.Recipe:
    if distro == "debian":
        return DebianRecipe(name)
    return ArchRecipe(name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vmbackend image", description="VM images")
    p.add_argument(
        "--images-dir",
        type=Path,
        default=None,
        help="image folder (default: $WARREN_IMAGE_DIR or ~/.cache/warren/images)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build", help="build an image (cached: rebuilt only when its recipe changes)"
    )
    b.add_argument(
        "name", help="image name: `tiny` (test image) or a RabbitMQ image, e.g. rabbitmq"
    )
    b.add_argument("--distro", choices=DISTROS, default="debian")
    b.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged")
    s = sub.add_parser("snapshot", help="save a pre-booted, RabbitMQ-ready state of an image")
    s.add_argument("name")
    sub.add_parser("list", help="list the built images")
    return p


def main(argv: list[str]) -> int:
    # Ctrl-C must stop a build (and remove its temporary folder) however we were started: a
    # background job of a non-interactive shell inherits SIGINT ignored, and Python keeps that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    root = args.images_dir or manifest.default_images_root()
    progress = build.Clock()
    try:
        if args.command == "list":
            rows = build.list_images(root)
            if not rows:
                print(f"no images in {root}")
            for row in rows:
                print(json.dumps(row, sort_keys=True))
            return 0
        manifest.validate_name(args.name)
        if args.command == "snapshot":
            snapshot.create(root, args.name, progress)
            return 0
        if args.name == "tiny":
            tiny.build(root, progress)
            return 0
        folder = build.build(
            root, _recipe(args.name, args.distro), force=args.force, progress=progress
        )
        print(folder)
        return 0
    except (build.BuildError, manifest.ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
