"""Making a VM restored from an image's saved state into itself (`Machine.personalize`).

A restored guest is a copy of the template: its hostname, clock, Erlang cookie and admin are the
template's. This module gives it the VM's own, through the guest agent (the image's
restore-settings script, guest-set-time) and the management API (the admin swap). It knows
nothing of QEMU or the VM's folder: the Machine hands it the agent, the spec and two callbacks.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Callable

from vmbackend.machine.guest_agent import GuestAgent, GuestAgentError
from vmbackend.machine.management_api import WRITE_TIMEOUT, ManagementAPI, ManagementAPIError
from vmbackend.machine.qemu import VMSpec

RESTORE_SETTINGS = "/usr/local/sbin/warren-restore-settings"
COOKIE_ALPHABET = string.ascii_uppercase

Check = Callable[[str], None]  # raises when the VM is gone; the argument says what we were doing


class PersonalizeError(Exception):
    """The restored guest could not be made into the VM; the message says which step."""


def erlang_cookie() -> str:
    return "".join(secrets.choice(COOKIE_ALPHABET) for _ in range(32))


def run(
    agent: GuestAgent,
    spec: VMSpec,
    management_url: Callable[[], str],
    *,
    template_admin: str | None,
    template_password: str | None,
    deadline: float,
    check: Check,
    before_cookie: Callable[[], None] | None = None,
) -> None:
    """The guest's clock, hostname, a fresh Erlang cookie, and the VM's own admin in place of
    the template's (`deadline` is a time.monotonic() value). `before_cookie` runs once the rest
    is done and before the cookie rotation starts (the VM's TLS certificate: it talks to the node
    with the cookie file, which the rotation replaces)."""
    # Under TCG every program the guest agent runs costs seconds, so the guest-side work
    # overlaps the host-side: the hostname script starts first, the admin swap (HTTP) and
    # the clock run while it works, then we collect its result.
    try:
        hostname = agent.exec_start(
            RESTORE_SETTINGS, input_data=json.dumps({"hostname": spec.hostname}).encode()
        )
        swap_admin(management_url(), spec, template_admin, template_password, deadline, check)
        agent.set_time(timeout=max(5.0, deadline - time.monotonic()))
        result = agent.exec_wait(hostname, RESTORE_SETTINGS, max(deadline, time.monotonic() + 5))
    except GuestAgentError as exc:
        raise PersonalizeError(str(exc)) from exc
    if result.exitcode != 0:
        raise PersonalizeError(
            f"{RESTORE_SETTINGS} exited {result.exitcode}: {result.stderr[-300:]!r}"
        )
    if before_cookie is not None:
        before_cookie()
    # The cookie rotation is not waited for: it takes many seconds under TCG, the script
    # reports its outcome in the guest (/run/warren/cookie-rotation), and the management
    # API does not depend on it.
    try:
        agent.exec_start(
            RESTORE_SETTINGS, input_data=json.dumps({"erlang_cookie": erlang_cookie()}).encode()
        )
    except GuestAgentError as exc:
        raise PersonalizeError(f"cookie rotation not started: {exc}") from exc


def swap_admin(
    base_url: str,
    spec: VMSpec,
    template_admin: str | None,
    template_password: str | None,
    deadline: float,
    check: Check,
) -> None:
    """Create the VM's own administrator through the management API, check it, and delete
    the template's. Idempotent: a retry after a partial swap finishes it."""
    me = ManagementAPI(base_url, spec.admin_user, spec.admin_password)
    try:
        me.whoami()
        swapped = True
    except ManagementAPIError:
        swapped = False
    try:
        if not swapped:
            if not template_admin or template_password is None:
                raise PersonalizeError("the saved state's template admin is unknown")
            template = ManagementAPI(
                base_url, template_admin, template_password, timeout=WRITE_TIMEOUT
            )
            template.wait_until_ok(
                "api/overview", deadline, check=lambda: check("waiting for the template admin")
            )
            template.set_user(me.user, spec.admin_password)
            template.set_permissions(me.user)
            me.wait_until_ok(
                "api/whoami", deadline, check=lambda: check("waiting for the VM's own admin")
            )
        if template_admin and template_admin != me.user:
            me.delete_user(template_admin)
    except ManagementAPIError as exc:
        raise PersonalizeError(f"admin swap: {exc}") from exc
