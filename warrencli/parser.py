"""The `warren` command line: its subcommands and options (run by warrencli.main)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def build(commands: dict[str, Callable[..., int]]) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--wait", action="store_true", help="wait until it has finished")
    waiting.add_argument("--timeout", type=float, default=1800, help="seconds to wait at most")
    waiting.add_argument("--interval", type=float, default=2, help=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="warren",
        description="Warren's hosted RabbitMQ from the command line.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, help_: str, *parents: argparse.ArgumentParser, **kw: Any
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, parents=[common, *parents], **kw)
        p.set_defaults(run=commands[name.replace("-", "_")])
        return p

    login = add("login", "save the API's URL and a token (0600, ~/.config/warren)")
    login.add_argument("--url", required=True, help="the shop, e.g. https://warren.example")
    login.add_argument("--token", required=True, help="a token from the account's API page")
    add("plans", "the plans on sale")
    add("servers", "your servers")
    create = add("create", "buy a server", waiting)
    create.add_argument("--plan", required=True)
    create.add_argument("--pay-offline", action="store_true", help="development shops only")
    add("show", "a server and its credentials").add_argument("server")
    add("cancel", "cancel a server (it is deleted)").add_argument("server")
    add("restart", "restart a server", waiting).add_argument("server")
    add("rotate-password", "give a server a new admin password", waiting).add_argument("server")
    change = add("change-plan", "move a server to another plan", waiting)
    change.add_argument("server")
    change.add_argument("--plan", required=True)
    add("job", "a job's status", waiting).add_argument("job")
    metrics = add("metrics", "a server's measurements")
    metrics.add_argument("server")
    metrics.add_argument("--range", default="1h", choices=["1h", "24h", "7d"])
    alarms = add("alarms", "a server's alarms: list, add, remove")
    alarm_sub = alarms.add_subparsers(dest="alarm_command")
    alarm_list = alarm_sub.add_parser("list", parents=[common])
    alarm_list.add_argument("server")
    alarm_add = alarm_sub.add_parser("add", parents=[common])
    alarm_add.add_argument("server")
    alarm_add.add_argument(
        "--kind", required=True, choices=["queue_depth", "connections", "message_rate"]
    )
    alarm_add.add_argument("--threshold", required=True, type=float)
    alarm_add.add_argument("--minutes", required=True, type=int)
    alarm_remove = alarm_sub.add_parser("remove", parents=[common])
    alarm_remove.add_argument("server")
    alarm_remove.add_argument("alarm", type=int)
    return parser
