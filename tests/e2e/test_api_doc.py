"""docs/api.md, run: every `sh` block of its two walkthroughs (curl, then the CLI) against the
whole system (web, relay, event worker, a host daemon booting the tiny image), in order, as one
bash script each. The commands are read from the markdown, so the page cannot drift."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.e2e.harness import ROOT, System

pytestmark = pytest.mark.django_db(transaction=False, databases=[])

DOC = ROOT / "docs" / "api.md"
WALKS = ("Walkthrough with curl", "Walkthrough with the CLI")
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## ", text, flags=re.M)
    return {part.split("\n", 1)[0].strip(): part for part in parts[1:]}


def commands(section: str) -> list[str]:
    return BLOCK.findall(section)


def test_every_sh_block_of_the_page_is_in_a_walkthrough():
    text = DOC.read_text()
    walked = [block for name in WALKS for block in commands(sections(text)[name])]
    assert len(walked) == len(BLOCK.findall(text))
    assert len(commands(sections(text)[WALKS[0]])) >= 5
    assert len(commands(sections(text)[WALKS[1]])) >= 3


def _token(system: System, username: str) -> str:
    out = system.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; from orders.api.tokens import create_token; "
        f"print(create_token(user=User.objects.get(username={username!r}), name='doc', "
        "scope='read-write')[1])",
    )
    return out.strip().splitlines()[-1]


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.vm
@pytest.mark.timeout(1500)
def test_the_api_guide_runs_against_the_live_system(tiny_system: System, tmp_path: Path) -> None:
    system = tiny_system
    system.start_all()
    system.create_customer("dora", "a-long-passphrase-1")
    token = _token(system, "dora")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "warren"  # the installed command's entry point, from this checkout
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m warrencli "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "WARREN_URL": system.base_url,
        "WARREN_TOKEN": token,
        "WARREN_CONFIG": str(tmp_path / "warren" / "config.json"),
    }
    text = DOC.read_text()
    api = f"{system.base_url}/api/v1"
    auth = {"Authorization": f"Bearer {token}"}
    for walk in WALKS:
        before = {
            s["id"]
            for s in requests.get(f"{api}/servers", headers=auth, timeout=10).json()["items"]
        }
        done = _run("\n".join(commands(sections(text)[walk])), env)
        assert done.returncode == 0, f"{walk}:\n{done.stdout}\n{done.stderr}\n{system.logs()}"
        servers = requests.get(f"{api}/servers", headers=auth, timeout=10).json()["items"]
        (server,) = [s for s in servers if s["id"] not in before]
        jobs = requests.get(f"{api}/servers/{server['id']}/jobs", headers=auth, timeout=10).json()
        assert [(j["kind"], j["status"]) for j in jobs["items"]] == [("rotate-password", "done")]
        assert "password" in done.stdout or walk == WALKS[0]
        assert server["status"] in ("deleting", "deleted", "cancelled")  # the walk cancels it
