"""Running one command of an image build step: its output appended to the build log and shown as
progress, a heartbeat while it runs, its process group killed when the build fails or is
interrupted, and a BuildError with the output's tail when it fails.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vmbackend.images.build import BuildError, Context, Progress


def run(
    cmd: Sequence[str | os.PathLike[str]],
    ctx: Context,
    *,
    summarize: Callable[[str], str | None] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    heartbeat: float = 15.0,
) -> None:
    """Run `cmd`, appending its output to ctx.log_path. Progress shows the lines `summarize`
    returns (default: none) plus a heartbeat while it runs; a failure raises BuildError with the
    output's tail. The command runs in its own process group, killed if we are interrupted."""
    argv = [os.fspath(c) for c in cmd]
    tail: collections.deque[str] = collections.deque(maxlen=30)
    with open(ctx.log_path, "a", encoding="utf-8", errors="replace") as logf:
        logf.write(f"$ {' '.join(argv)}\n")
        logf.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        try:
            _pump(proc, argv[0], logf, tail, ctx.progress, summarize, timeout, heartbeat)
        except BaseException:
            _kill_group(proc)
            raise
    if proc.returncode != 0:
        raise BuildError(
            f"{Path(argv[0]).name} exited with {proc.returncode}; last output:\n" + "\n".join(tail)
        )


def _pump(
    proc: subprocess.Popen[bytes],
    command: str,
    logf: Any,
    tail: collections.deque[str],
    progress: Progress,
    summarize: Callable[[str], str | None] | None,
    timeout: float,
    heartbeat: float,
) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    last_note = time.monotonic()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            if time.monotonic() > deadline:
                raise BuildError(f"{command} did not finish within {timeout:.0f} s")
            events = sel.select(timeout=1.0)
            if events:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip()
                    logf.write(line + "\n")
                    tail.append(line)
                    note = summarize(line) if summarize else None
                    if note:
                        progress("  " + note)
                        last_note = time.monotonic()
            if time.monotonic() - last_note > heartbeat:
                progress("  ... " + (tail[-1][:100] if tail else "working"))
                last_note = time.monotonic()
        if buf:
            line = buf.decode("utf-8", "replace")
            logf.write(line + "\n")
            tail.append(line)
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def which(*tools: str) -> None:
    """Raise BuildError naming the first of `tools` that is not installed."""
    for tool in tools:
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed (run `make system`)")
