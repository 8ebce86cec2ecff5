"""Image builds: recipes of steps, visible progress, a recipe-hash cache and atomic build folders.

A recipe (debian.py, arch.py, or a test's fake) is a list of steps that fill a temporary sibling of
the image folder (`<images_root>/.<name>.build-<pid>`). Only when every step has succeeded is
image.json written (last) and the folder renamed into place, so an image folder with a manifest is
always complete. A failure or Ctrl-C removes the temporary folder; a folder left by a build that
was killed outright is removed by the next build of that image (builds of one image hold a lock).
The engine every recipe runs on; the recipes are their own modules, and running one command of a
step (its output as progress, its process group killed on failure) is runner.py.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbackend.files import write_json_atomic
from vmbackend.images import manifest

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

# Bump when the build machinery changes in a way that changes the images it makes.
BUILD_FORMAT = "1"


class BuildError(Exception):
    """A build step failed; the message says which step and why."""


def _print_now(line: str) -> None:
    print(line, flush=True)  # visible at once even when stdout is a pipe (make | tee, CI logs)


class Clock:
    """Prints progress lines prefixed with the seconds since the build started."""

    def __init__(self, out: Callable[[str], None] | None = None) -> None:
        self.start = time.monotonic()
        self.out = out or _print_now

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, message: str) -> None:
        self.out(f"[{self.elapsed():6.1f}s] {message}")


@dataclass
class Context:
    """What a step gets: the temporary image folder and a progress function."""

    work: Path  # becomes <images_root>/<name>
    final: Path  # where the image will live (for manifest validation only; do not write there)
    progress: Progress
    log_path: Path  # full output of commands (kept after a failure, outside the work folder)
    recipe_hash: str = ""
    facts: dict[str, Any] = field(default_factory=dict)  # steps pass data to later steps

    @property
    def rootfs(self) -> Path:
        return self.work / "rootfs"

    @property
    def disk_name(self) -> str:
        """The base disk's file name, unique per recipe: VMs' overlays name their backing file
        by absolute path, so a rebuild must never put different content under an old name."""
        return f"disk-{self.recipe_hash.removeprefix('sha256:')[:16]}.qcow2"


@dataclass(frozen=True)
class Step:
    title: str
    run: Callable[[Context], None]


class Recipe:
    """Base class of recipes. Subclasses set the attributes and implement steps() and manifest()."""

    name: str = ""
    distro: str = ""
    kind: str = "rabbitmq"
    packages: tuple[str, ...] = ()

    def source_files(self) -> list[Path]:
        """Files whose contents define the image (hashed into recipe_hash)."""
        return []

    def hash_extra(self) -> str:
        """Anything else the image depends on (suite, settings), as text."""
        return ""

    def preflight(self, progress: Progress) -> None:
        """Cheap checks before any work (tools present, mirror reachable). Raise BuildError."""

    def steps(self) -> Sequence[Step]:
        raise NotImplementedError

    def manifest(self, ctx: Context) -> dict[str, Any]:
        """image.json fields except format/name/recipe_hash/built_at."""
        raise NotImplementedError


def recipe_hash(recipe: Recipe) -> str:
    """sha256 over the recipe's source files (by name and content), packages and extra text."""
    h = hashlib.sha256()
    h.update(f"build-format={BUILD_FORMAT}\n".encode())
    h.update(f"distro={recipe.distro}\nkind={recipe.kind}\n".encode())
    h.update(("packages=" + " ".join(sorted(recipe.packages)) + "\n").encode())
    h.update(("extra=" + recipe.hash_extra() + "\n").encode())
    for path in sorted(recipe.source_files(), key=lambda p: p.name + str(p)):
        data = Path(path).read_bytes()
        h.update(f"file={Path(path).name} {len(data)}\n".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


def current_hash(images_root: Path, name: str) -> str | None:
    """recipe_hash of the built image `name`, or None when there is no complete image."""
    try:
        return manifest.load(images_root, name).recipe_hash
    except manifest.ImageError:
        return None


# --- folders -----------------------------------------------------------------------------------


def remove_tree(path: Path) -> None:
    """Remove a build folder without ever following a mount point out of it.

    Builds mount /proc etc. only inside private mount namespaces, so nothing should be mounted
    here; should something be (a crashed foreign tool), unmount it lazily first, and let
    `rm --one-file-system` refuse to descend into anything that is still a mount."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    prefix = str(path.resolve()) + "/"
    mounts = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, timeout=60)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False, timeout=600)
    if path.exists():
        raise BuildError(f"could not remove {path}")


@contextlib.contextmanager
def _lock(images_root: Path, name: str) -> Iterator[None]:
    lock_path = images_root / f".{name}.lock"
    with open(lock_path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another build of image {name!r} is running") from None
        yield


def _clean_stale(images_root: Path, name: str, progress: Progress) -> None:
    """With the image's lock held, any temp folder of this image is from a killed build."""
    for pattern in (f".{name}.build-*", f".{name}.old-*"):
        for stale in images_root.glob(pattern):
            progress(f"removing stale folder {stale.name} left by an interrupted build")
            remove_tree(stale)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so `finally` blocks remove the temporary folder."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the build ---------------------------------------------------------------------------------


def build(
    images_root: Path,
    recipe: Recipe,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Build `recipe` into <images_root>/<recipe.name> unless an image with the same recipe hash
    exists (or `force`). Returns the image folder."""
    progress = progress or Clock()
    name = manifest.validate_name(recipe.name)
    images_root = Path(images_root)
    images_root.mkdir(parents=True, exist_ok=True)
    final = images_root / name
    wanted = recipe_hash(recipe)
    if not force and current_hash(images_root, name) == wanted:
        progress(f"image {name} is up to date ({wanted[:19]}), nothing to do")
        return final
    recipe.preflight(progress)
    with _lock(images_root, name), _sigterm_as_exit():
        _clean_stale(images_root, name, progress)
        work = images_root / f".{name}.build-{os.getpid()}"
        work.mkdir()
        log_path = images_root / f".{name}.build.log"
        log_path.write_text("")
        ctx = Context(
            work=work, final=final, progress=progress, log_path=log_path, recipe_hash=wanted
        )
        try:
            steps = list(recipe.steps())
            for i, step in enumerate(steps, 1):
                started = time.monotonic()
                progress(f"step {i}/{len(steps)}: {step.title}")
                try:
                    step.run(ctx)
                except BuildError as exc:
                    raise BuildError(
                        f"step {step.title!r} failed: {exc} (log: {log_path})"
                    ) from exc
                progress(f"step {i}/{len(steps)} done in {time.monotonic() - started:.1f}s")
            _finish(ctx, recipe, name, wanted, progress)
        except BaseException:
            progress(f"build of {name} failed; removing {work.name}")
            remove_tree(work)
            raise
    log.info("event=image_built image=%s recipe_hash=%s", name, wanted)
    return final


def _finish(ctx: Context, recipe: Recipe, name: str, wanted: str, progress: Progress) -> None:
    if ctx.rootfs.exists():
        remove_tree(ctx.rootfs)
    data = {
        "name": name,
        "distro": recipe.distro,
        "recipe_hash": wanted,
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **recipe.manifest(ctx),
    }
    data = {"format": manifest.FORMAT, **data}
    manifest.parse(data, ctx.final)  # validate against the final folder name before writing
    for key in ("kernel", "initrd", "disk"):
        if data.get(key) and not (ctx.work / data[key]).is_file():
            raise BuildError(f"recipe did not produce {data[key]}")
    write_json_atomic(ctx.work / manifest.MANIFEST, data)
    if ctx.final.exists():
        _carry_over(ctx.final, ctx.work, progress)
    old = ctx.final.with_name(f".{name}.old-{os.getpid()}")
    if ctx.final.exists():
        os.rename(ctx.final, old)
    os.rename(ctx.work, ctx.final)
    if old.exists():
        remove_tree(old)
    size = sum(p.stat().st_blocks * 512 for p in ctx.final.rglob("*") if p.is_file())
    progress(f"image {name} ready in {ctx.final} ({size / 1e6:.0f} MB on disk)")


def _carry_over(previous: Path, new: Path, progress: Progress) -> None:
    """Keep what existing VMs may still depend on when an image is rebuilt: the previous base
    disks (`disk-<hash>.qcow2`, earlier `disk.qcow2`; backing files of VM overlays) and the saved state (its disk is
    an overlay of the previous base disk; a saved state whose recipe no longer matches is not
    used for new VMs). Remove retired disks by hand once no VM uses them."""
    for disk in sorted(previous.glob("disk*.qcow2")):  # also the older fixed name disk.qcow2
        if not (new / disk.name).exists():
            os.rename(disk, new / disk.name)
            progress(f"kept the previous base disk {disk.name} for VMs that use it")
    saved = previous / "saved"
    if saved.is_dir() and not (new / "saved").exists():
        os.rename(saved, new / "saved")
        progress("kept the previous saved state (it will not match the new recipe)")


def list_images(images_root: Path) -> list[dict[str, Any]]:
    """One row per built image: name, distro, kind, built_at, size in bytes, saved state present."""
    rows: list[dict[str, Any]] = []
    for name in manifest.available(images_root):
        try:
            m = manifest.load(images_root, name)
        except manifest.ImageError as exc:
            rows.append({"name": name, "error": str(exc)})
            continue
        size = sum(p.stat().st_blocks * 512 for p in m.folder.rglob("*") if p.is_file())
        rows.append(
            {
                "name": name,
                "distro": m.distro,
                "kind": m.guest.kind,
                "built_at": m.built_at,
                "bytes": size,
                "saved": (m.saved_dir / "meta.json").is_file(),
            }
        )
    return rows
