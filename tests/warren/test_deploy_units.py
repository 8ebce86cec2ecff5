"""The production web unit serves the way `python -m warren run` does (gthread workers): each
order page's long poll holds a thread, so sync workers would let a few open pages take the site."""

from __future__ import annotations

import shlex
from pathlib import Path

from warren.run import Options, service_commands

ROOT = Path(__file__).resolve().parents[2]


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _exec_start(unit: Path) -> list[str]:
    text = unit.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_the_web_unit_runs_gthread_workers_like_warren_run():
    unit = _exec_start(ROOT / "deploy/systemd/warren-web.service")
    run = service_commands(Options())["web"]

    assert _flag(unit, "--worker-class") == _flag(run, "--worker-class") == "gthread"
    assert int(_flag(unit, "--threads")) >= int(_flag(run, "--threads"))
