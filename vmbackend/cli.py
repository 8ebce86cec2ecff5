"""Command line: `python -m vmbackend <command> ...`."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    if argv and argv[0] == "image":
        from vmbackend.images.cli import main as image_main

        return image_main(argv[1:])
    print("usage: python -m vmbackend image ...")
    return 2
