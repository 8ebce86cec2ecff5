"""One password rule for the protocol and the guest (issue 20): a password the guest refuses
(`#$&;` ...) was accepted by the protocol and failed only inside the VM. Now whatever the
protocol's parsers accept, the guest's own check (warren-firstboot's PASSWORD_RE, run by real
bash as in the VM) accepts too; anything else is refused at parse time, by create-vm and by the
console's set-admin-password alike; and what the shop generates always passes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbackend.protocol import messages
from vmbackend.protocol.messages import PASSWORD_RE, Rejected

FIRSTBOOT = Path(__file__).resolve().parents[3] / "vmbackend/images/guest/warren-firstboot"
GUEST_RE_LINE = next(
    line for line in FIRSTBOOT.read_text().splitlines() if line.startswith("PASSWORD_RE=")
)
# The guest script's check, exactly: its own PASSWORD_RE line and bash's =~, one line per
# password on stdin (none of the candidates holds a newline), "1" when taken, "0" when refused.
GUEST_CHECK = (
    GUEST_RE_LINE + "\nwhile IFS= read -r p; do [[ $p =~ $PASSWORD_RE ]] && echo 1 || echo 0; done"
)


def _guest_takes(passwords: list[str]) -> list[bool]:
    out = subprocess.run(
        ["bash", "-c", GUEST_CHECK],
        input="".join(p + "\n" for p in passwords),
        capture_output=True,
        text=True,
        check=True,
        env={"LC_ALL": "C"},
    ).stdout.split()
    assert len(out) == len(passwords)
    return [flag == "1" for flag in out]


def _parses(password: str) -> dict[str, bool]:
    admin = {"username": "warren-abc", "password": password}
    bodies = {
        "create-vm": messages.command("create-vm", {"image": "tiny", "admin": admin}),
        "set-admin-password": messages.command(
            "set-admin-password",
            {"vm-id": "vm-1", "request-id": "5f1d2c3b-4a59-4e8f-9d0c-1b2a3c4d5e6f", "admin": admin},
        ),
    }
    taken = {}
    for name, body in bodies.items():
        try:
            messages.parse(body)
            taken[name] = True
        except Rejected as exc:
            assert "password must be" in exc.reason
            assert len(password) < 12 or password not in exc.reason  # never echoed
            taken[name] = False
    return taken


PASSWORDS = st.lists(
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)
        | st.sampled_from("#$&;'\"`\\<>(){}[]| é\t"),
        min_size=0,
        max_size=140,
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(PASSWORDS)
def test_the_protocol_takes_exactly_what_the_guest_takes(passwords):
    guest = _guest_takes(passwords)
    for password, guest_ok in zip(passwords, guest, strict=True):
        taken = _parses(password)
        assert taken["create-vm"] == taken["set-admin-password"], password
        in_length = 12 <= len(password) <= 128
        assert taken["create-vm"] == (guest_ok and in_length), (password, guest_ok)


@pytest.mark.parametrize("char", list("#$&;'\"`\\<>(){}[]| "))
def test_the_characters_the_guest_refuses_are_refused_by_the_protocol(char):
    password = "abcdefgh1234" + char
    assert _guest_takes([password]) == [False]
    assert _parses(password) == {"create-vm": False, "set-admin-password": False}


def test_the_guest_s_rule_and_the_protocol_s_name_the_same_characters():
    guest_class = re.search(r"\^\[(.*)\]\{", GUEST_RE_LINE)
    assert guest_class is not None
    assert guest_class.group(1) == messages.PASSWORD_CHARS


def test_what_the_shop_generates_always_passes():
    generated = [messages.generate_admin()[1] for _ in range(300)]
    assert all(PASSWORD_RE.fullmatch(p) for p in generated)
    assert all(_guest_takes(generated))
