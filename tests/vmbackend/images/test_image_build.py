"""Image builds: recipe hash, cache, atomic build folders, cleanup after failures, the CLI.

Fake recipes with cheap steps exercise the real build machinery (vmbackend/images/build.py); the
Debian recipe is built and booted in test_debian_image.py (slow tier).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.e2e.harness import wait_until
from tests.net import free_port
from vmbackend.images import build, manifest, runner
from vmbackend.images.arch import ArchRecipe
from vmbackend.images.build import BuildError, Context, Recipe, Step
from vmbackend.images.debian import DebianRecipe, _DebootstrapSummary, debian_mirror

REPO = Path(__file__).resolve().parents[3]


class FakeRecipe(Recipe):
    """Writes a kernel-only image; `fail_at` makes that step raise; `calls` counts step runs."""

    distro = "fake"
    kind = "tiny"

    def __init__(
        self, name: str, source: Path, *, fail_at: int | None = None, exc: type = BuildError
    ):
        self.name = name
        self.source = source
        self.fail_at = fail_at
        self.exc = exc
        self.calls = 0
        self.packages = ("busybox",)

    def source_files(self) -> list[Path]:
        return [self.source]

    def steps(self) -> list[Step]:
        return [Step(f"step {i}", self._step(i)) for i in range(3)]

    def _step(self, i: int):
        def run(ctx: Context) -> None:
            self.calls += 1
            ctx.rootfs.mkdir(exist_ok=True)
            (ctx.rootfs / f"file{i}").write_text("x")
            (ctx.work / "vmlinuz").write_text(f"kernel from {self.source.read_text()}")
            (ctx.work / ctx.disk_name).write_text(f"disk from {self.source.read_text()}")
            if i == self.fail_at:
                raise self.exc("boom in the fake step")

        return run

    def manifest(self, ctx: Context) -> dict:
        return {"kernel": "vmlinuz", "initrd": None, "disk": ctx.disk_name, "append": "console=ttyS0",
                "guest": {"kind": "tiny", "management_port": 15672}}  # fmt: skip


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.txt"
    path.write_text("version 1")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "images"
    path.mkdir()
    return path


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if ".build-" in p.name or ".old-" in p.name)


def quiet(_: str) -> None:
    pass


def test_recipe_hash_is_stable_and_differs_between_recipes():
    assert build.recipe_hash(DebianRecipe()) == build.recipe_hash(DebianRecipe())
    assert build.recipe_hash(ArchRecipe()) == build.recipe_hash(ArchRecipe())
    assert build.recipe_hash(DebianRecipe()) != build.recipe_hash(ArchRecipe())
    assert build.recipe_hash(DebianRecipe()).startswith("sha256:")
    # Uncompressed disks are a different image.
    assert build.recipe_hash(DebianRecipe(compress=False)) != build.recipe_hash(DebianRecipe())


def test_recipe_hash_covers_the_guest_files_and_recipe_sources():
    names = {p.name for p in DebianRecipe().source_files()}
    assert {"debian.py", "rootfs.py", "warren-firstboot", "warren-restore-settings",
            "warren-firstboot.service", "rabbitmq.conf", "enabled_plugins"} <= names  # fmt: skip


def test_recipe_hash_changes_with_source_content_and_packages(source: Path):
    recipe = FakeRecipe("fake", source)
    first = build.recipe_hash(recipe)
    source.write_text("version 2")
    second = build.recipe_hash(recipe)
    assert second != first
    recipe.packages = ("busybox", "curl")
    assert build.recipe_hash(recipe) not in (first, second)
    source.write_text("version 1")
    recipe.packages = ("busybox",)
    assert build.recipe_hash(recipe) == first


def test_a_build_writes_the_manifest_and_renames_into_place(root: Path, source: Path):
    lines: list[str] = []
    folder = build.build(root, FakeRecipe("fake", source), progress=lines.append)
    assert folder == root / "fake"
    m = manifest.load(root, "fake")
    assert m.recipe_hash == build.recipe_hash(FakeRecipe("fake", source))
    assert m.kernel.read_text() == "kernel from version 1"
    assert not (folder / "rootfs").exists()  # the build's root file system is not kept
    assert leftovers(root) == []
    assert any(line.startswith("step 1/3") for line in lines)
    assert any("ready" in line for line in lines)


def test_a_cache_hit_does_no_work_and_force_or_a_changed_recipe_rebuilds(root: Path, source: Path):
    recipe = FakeRecipe("fake", source)
    build.build(root, recipe, progress=quiet)
    assert recipe.calls == 3
    built_at = manifest.load(root, "fake").recipe_hash
    lines: list[str] = []
    build.build(root, recipe, progress=lines.append)
    assert recipe.calls == 3
    assert any("up to date" in line for line in lines)
    build.build(root, recipe, force=True, progress=quiet)
    assert recipe.calls == 6
    source.write_text("version 2")
    build.build(root, recipe, progress=quiet)
    assert recipe.calls == 9
    assert manifest.load(root, "fake").recipe_hash != built_at
    assert manifest.load(root, "fake").kernel.read_text() == "kernel from version 2"


def test_a_rebuild_keeps_what_existing_vms_use(root: Path, source: Path):
    build.build(root, FakeRecipe("fake", source), progress=quiet)
    first = manifest.load(root, "fake")
    (first.folder / "saved").mkdir()
    (first.folder / "saved" / "meta.json").write_text("{}")
    (first.folder / "disk.qcow2").write_text("an image from before disks had per-recipe names")
    source.write_text("version 2")
    build.build(root, FakeRecipe("fake", source), progress=quiet)
    second = manifest.load(root, "fake")
    assert second.disk != first.disk  # a new name: old overlays never see new content
    assert second.disk.read_text() == "disk from version 2"
    assert first.disk.read_text() == "disk from version 1"  # still there, same path
    assert (second.folder / "saved" / "meta.json").is_file()
    assert (second.folder / "disk.qcow2").is_file()
    assert leftovers(root) == []


def test_a_failing_step_leaves_no_image_and_no_temp_folder(root: Path, source: Path):
    with pytest.raises(BuildError, match="step 1.*boom in the fake step"):
        build.build(root, FakeRecipe("fake", source, fail_at=1), progress=quiet)
    assert not (root / "fake").exists()
    assert leftovers(root) == []


def test_a_failed_rebuild_keeps_the_previous_image(root: Path, source: Path):
    build.build(root, FakeRecipe("fake", source), progress=quiet)
    source.write_text("version 2")
    with pytest.raises(BuildError):
        build.build(root, FakeRecipe("fake", source, fail_at=2), progress=quiet)
    assert manifest.load(root, "fake").kernel.read_text() == "kernel from version 1"
    assert leftovers(root) == []


def test_ctrl_c_in_a_step_removes_the_temp_folder(root: Path, source: Path):
    with pytest.raises(KeyboardInterrupt):
        build.build(
            root, FakeRecipe("fake", source, fail_at=0, exc=KeyboardInterrupt), progress=quiet
        )
    assert not (root / "fake").exists()
    assert leftovers(root) == []


def test_a_failing_command_reports_its_output_tail(root: Path, tmp_path: Path):
    ctx = Context(work=tmp_path, final=root / "x", progress=quiet, log_path=tmp_path / "log")
    with pytest.raises(BuildError, match=r"exited with 3(.|\n)*disk on fire"):
        runner.run(["sh", "-c", "echo starting; echo disk on fire; exit 3"], ctx)
    assert "disk on fire" in (tmp_path / "log").read_text()


def test_a_stale_temp_folder_from_a_killed_build_is_removed(root: Path, source: Path):
    stale = root / ".fake.build-999999"
    (stale / "rootfs" / "etc").mkdir(parents=True)
    (stale / "rootfs" / "etc" / "hostname").write_text("x")
    other = root / ".other.build-999999"  # another image's build is none of our business
    other.mkdir()
    build.build(root, FakeRecipe("fake", source), progress=quiet)
    assert not stale.exists()
    assert other.exists()


KILLABLE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from vmbackend.images import build, runner
from vmbackend.images.build import Recipe, Step

class Slow(Recipe):
    name, distro, kind = "slow", "fake", "tiny"
    def steps(self):
        def step(ctx):
            ctx.rootfs.mkdir()
            (ctx.rootfs / "started").write_text("x")
            runner.run(["sleep", "300"], ctx)
        return [Step("sleep", step)]
    def manifest(self, ctx):
        return {{"kernel": "vmlinuz", "append": "", "guest": {{"kind": "tiny"}}}}

build.build(Path({root!r}), Slow(), progress=print)
"""


def start_slow_build(root: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path, int]:
    """A build in another process, inside a step running `sleep 300`: (process, work folder,
    pid of the sleep)."""
    script = tmp_path / "slow_build.py"
    script.write_text(KILLABLE.format(repo=str(REPO), root=str(root)))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # The script is not the CLI (which sets its own handler): give it Ctrl-C's default
        # explicitly, or a test run started in the background would hand it SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        started = list(root.glob(".slow.build-*/rootfs/started"))
        child = subprocess.run(
            ["pgrep", "-P", str(proc.pid), "-x", "sleep"], capture_output=True, text=True
        )
        if started and child.stdout.strip():
            return proc, started[0].parents[1], int(child.stdout.split()[0])
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the slow build did not start")


def gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_build_removes_its_temp_folder_and_its_command(
    root: Path, tmp_path: Path, sig
):
    proc, work, sleep_pid = start_slow_build(root, tmp_path)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert not work.exists(), out
    assert leftovers(root) == []
    assert gone(sleep_pid)  # the step's command was killed with the build


def test_a_build_killed_outright_is_cleaned_by_the_next_build(
    root: Path, tmp_path: Path, source: Path
):
    proc, work, sleep_pid = start_slow_build(root, tmp_path)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.wait(timeout=10)
    os.kill(sleep_pid, signal.SIGKILL)  # the orphaned step command (our own child's child)
    assert work.exists()
    build.build(root, FakeRecipe("slow", source), progress=quiet)
    assert not work.exists()
    assert manifest.load(root, "slow").kernel.is_file()


def test_two_builds_of_one_image_do_not_run_at_once(root: Path, tmp_path: Path, source: Path):
    proc, work, _ = start_slow_build(root, tmp_path)
    try:
        with pytest.raises(BuildError, match="another build"):
            build.build(root, FakeRecipe("slow", source), progress=quiet)
        assert work.exists()  # the running build's folder is left alone
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def _pids_running(*needles: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if all(n in cmdline for n in needles):
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("debootstrap") is None,
    reason="a Debian build step needs root and debootstrap",
)
def test_ctrl_c_stops_a_cli_build_even_when_started_with_sigint_ignored(root: Path):
    """A background job of a non-interactive shell starts with SIGINT ignored; the CLI must
    still stop on Ctrl-C and clean up, as it does in a terminal."""
    with socket.socket() as mirror:  # accepts connections (in the backlog) and never answers
        mirror.bind(("127.0.0.1", 0))
        mirror.listen(8)
        env = {
            **os.environ,
            "WARREN_DEBIAN_MIRROR": f"http://127.0.0.1:{mirror.getsockname()[1]}/debian",
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vmbackend",
                "image",
                "--images-dir",
                str(root),
                "build",
                "rabbitmq-3.10",  # a real recipe name (the name picks the release)
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        try:
            stuck = wait_until(
                lambda: _pids_running(b"debootstrap", str(root).encode()),
                30,
                "debootstrap to wait on the mirror",
                interval=0.05,
            )
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM still unwinds the build and stops its command
                proc.wait(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert leftovers(root) == []
    assert all(gone(pid) for pid in stuck)  # the step's command was stopped with the build


def test_debootstrap_output_is_summarised_per_phase():
    summary = _DebootstrapSummary()
    lines = [f"I: Retrieving pkg{i} 1.0" for i in range(120)] + ["I: Validating pkg0 1.0", "noise"]
    shown = [s for s in map(summary, lines) if s]
    assert shown == [
        "Retrieving pkg0 1.0",
        "Retrieving 50 ...",
        "Retrieving 100 ...",
        "Validating pkg0 1.0",
    ]
    assert summary("E: Couldn't download packages") == "E: Couldn't download packages"


def test_the_debian_mirror_is_the_one_apt_uses(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("WARREN_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: https://example.invalid/node\nSuites: nodistro\nComponents: main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        textwrap.dedent("""\
        Types: deb
        # a comment
        URIs: http://mirror.test/debian
        Suites: bookworm bookworm-updates
        Components: main

        Types: deb
        URIs: http://mirror.test/debian-security
        Suites: bookworm-security
        Components: main
        """)
    )
    assert debian_mirror(tmp_path) == "http://mirror.test/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://old.test/debian/ bookworm main contrib\n"
    )
    assert debian_mirror(tmp_path) == "http://old.test/debian"
    (tmp_path / "sources.list").write_text("")
    with pytest.raises(BuildError, match="WARREN_DEBIAN_MIRROR"):
        debian_mirror(tmp_path)
    monkeypatch.setenv("WARREN_DEBIAN_MIRROR", "http://override.test/debian/")
    assert debian_mirror(tmp_path) == "http://override.test/debian"


def cli(*args: str, root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "WARREN_ARCH_MIRROR"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "vmbackend", "image", "--images-dir", str(root), *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, env=full_env,
    )  # fmt: skip


def test_the_arch_recipe_fails_clearly_without_a_mirror(root: Path):
    result = cli("build", "rabbitmq", "--distro", "arch", root=root)
    assert result.returncode == 1
    assert "no Arch mirror configured/reachable: set WARREN_ARCH_MIRROR" in result.stderr
    assert list(root.iterdir()) == []  # nothing created, not even a lock


def test_the_arch_recipe_fails_clearly_with_an_unreachable_mirror(root: Path):
    port = free_port()  # a loopback port nobody listens on
    mirror = f"http://127.0.0.1:{port}/$repo/os/$arch"
    result = cli(
        "build", "rabbitmq", "--distro", "arch", root=root, env={"WARREN_ARCH_MIRROR": mirror}
    )
    assert result.returncode == 1
    assert "no Arch mirror configured/reachable" in result.stderr
    assert f"127.0.0.1:{port}/core/os/x86_64/core.db" in result.stderr
    assert list(root.iterdir()) == []


def test_cli_lists_built_images_and_rejects_bad_names(root: Path, source: Path):
    assert "no images" in cli("list", root=root).stdout
    build.build(root, FakeRecipe("fake", source), progress=quiet)
    rows = [json.loads(line) for line in cli("list", root=root).stdout.splitlines()]
    assert [(r["name"], r["distro"], r["kind"], r["saved"]) for r in rows] == [
        ("fake", "fake", "tiny", False)
    ]
    bad = cli("build", "../../etc/passwd", root=root)
    assert bad.returncode == 1
    assert "image name must match" in bad.stderr
