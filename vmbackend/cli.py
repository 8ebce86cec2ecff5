"""Command line: `python -m vmbackend <command> ...`.

`daemon` runs the host daemon; `create-vm`, `list-vms`, `start-vm`, `stop-vm`, `restart-vm`,
`delete-vm` and the console's `resize-vm` and `set-admin-password` (with `--host`; the password
is read from stdin, never from the command line) are clients that print JSON; `image ...` goes
to the image tool.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmbackend.host import config
from vmbackend.host.config import DEFAULT_AMQP_URL, ConfigError

CLIENT_COMMANDS = (
    "create-vm",
    "list-vms",
    "start-vm",
    "stop-vm",
    "restart-vm",
    "delete-vm",
    "resize-vm",
    "set-admin-password",
)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vmbackend")
    parser.add_argument("--amqp-url", default=None, help="(env WARREN_AMQP_URL)")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for a reply")
    parser.add_argument(
        "--host",
        default=None,
        help="send to one host's own key (host.<id>) instead of broadcasting",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-vm")
    create.add_argument("--image", required=True)
    create.add_argument("--vm-id")
    create.add_argument("--memory-mb", type=int)
    create.add_argument("--vcpus", type=int)
    create.add_argument("--disk-gb", type=int)
    create.add_argument(
        "--wait-ready",
        action="store_true",
        help="wait for instance.ready / instance.failed and print it",
    )
    create.add_argument("--ready-timeout", type=float, default=900)
    listing = sub.add_parser("list-vms")
    listing.add_argument("--wait", type=float, default=2.0, help="seconds to collect replies")
    for name in ("start-vm", "restart-vm", "delete-vm"):
        sub.add_parser(name).add_argument("vm_id")
    stop = sub.add_parser("stop-vm")
    stop.add_argument("vm_id")
    stop.add_argument("--kill", action="store_true", help="hard stop at once")
    resize = sub.add_parser("resize-vm", help="needs --host")
    resize.add_argument("vm_id")
    for flag in ("--memory-mb", "--vcpus", "--disk-gb"):
        resize.add_argument(flag, type=int, required=True)
    rotate = sub.add_parser("set-admin-password", help="needs --host; the password on stdin")
    rotate.add_argument("vm_id")
    rotate.add_argument("--username", required=True)
    for console in (resize, rotate):
        console.add_argument("--request-id", help="a UUID: a repeat with it changes nothing")
    return parser


def _console_options(args: argparse.Namespace) -> dict[str, Any]:
    """resize-vm / set-admin-password options (the password: the first line of stdin)."""
    options: dict[str, Any] = {"vm-id": args.vm_id}
    if args.request_id:
        options["request-id"] = args.request_id
    if args.command == "resize-vm":
        options.update({"memory-mb": args.memory_mb, "vcpus": args.vcpus, "disk-gb": args.disk_gb})
    else:
        password = sys.stdin.readline().rstrip("\r\n")
        options["admin"] = {"username": args.username, "password": password}
    return options


def _status(reply: dict[str, Any]) -> int:
    return 0 if reply.get("execution-info", {}).get("status") == "success" else 1


def run_client(argv: Sequence[str]) -> int:
    import pika.exceptions

    from vmbackend.client import Client, ClientError

    parser = _client_parser()
    args = parser.parse_args(list(argv))
    if args.command in ("resize-vm", "set-admin-password") and not args.host:
        parser.error(f"{args.command} goes to the VM's host: give --host <host id>")
    url = args.amqp_url or os.environ.get("WARREN_AMQP_URL") or DEFAULT_AMQP_URL
    try:
        with Client(url) as client:
            if args.command == "list-vms":
                _print(client.list_vms(wait=args.wait))
                return 0
            if args.command == "create-vm":
                options: dict[str, Any] = {"image": args.image}
                for key in ("vm_id", "memory_mb", "vcpus", "disk_gb"):
                    if getattr(args, key) is not None:
                        options[key.replace("_", "-")] = getattr(args, key)
                if args.wait_ready:
                    client.watch_events()
                reply = client.call("create-vm", options, timeout=args.timeout)
                _print(reply)
                if args.wait_ready and _status(reply) == 0:
                    event = client.wait_event(
                        reply["response"]["vm-id"],
                        ("instance.ready", "instance.failed"),
                        args.ready_timeout,
                    )
                    _print(event)
                    return 0 if event["type"] == "instance.ready" else 1
                return _status(reply)
            options = {"vm-id": args.vm_id}
            if args.command in ("resize-vm", "set-admin-password"):
                options = _console_options(args)
            if args.command == "stop-vm":
                options["kill"] = args.kill
            routing_key = f"host.{args.host}" if args.host else None
            reply = client.call(
                args.command, options, routing_key=routing_key, timeout=args.timeout
            )
            _print(reply)
            return _status(reply)
    except ClientError as exc:
        _print({"execution-info": {"status": "error", "reason": str(exc)}})
        return 1
    except (OSError, pika.exceptions.AMQPError) as exc:
        reason = f"broker unreachable: {type(exc).__name__}"
        _print({"execution-info": {"status": "error", "reason": reason}})
        return 1


def run_daemon(argv: Sequence[str]) -> int:
    try:
        cfg = config.load(flags=config.parse_args(argv))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if cfg.tls_dir is not None:  # an unusable CA folder fails here, not at every VM's boot
        from vmbackend.tls import authority

        try:
            warning = authority.check_scope(authority.load_issuer(cfg.tls_dir), cfg.vm_domain)
        except authority.TLSError as exc:
            print(f"config error: tls_dir: {exc}", file=sys.stderr)
            return 2
        if warning:
            print(f"warning: tls_dir: {warning}", file=sys.stderr)
    logging.basicConfig(
        level=os.environ.get("WARREN_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("pika").setLevel(logging.WARNING)
    from vmbackend.host.daemon import main as daemon_main

    return daemon_main(cfg)


def run_tls(argv: Sequence[str]) -> int:
    """`tls init-ca DIR`: the root (once, offline); `tls host CA_DIR HOST_ID OUT_DIR`: a host's
    intermediate, signed by the root (docs/tls.md). WARREN_CA_PASSPHRASE encrypts the root key."""
    from vmbackend.tls import authority
    from vmbackend.tls.scope import Scope, ScopeError, scope_of

    parser = argparse.ArgumentParser(prog="python -m vmbackend tls")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init-ca").add_argument("folder")
    host = sub.add_parser("host")
    host.add_argument("ca_folder")
    host.add_argument("host_id")
    host.add_argument("out")
    args = parser.parse_args(list(argv))
    passphrase = authority.passphrase_from_env()
    try:
        scope = Scope.from_env()
        if args.command == "init-ca":
            cert = authority.init_ca(Path(args.folder), passphrase=passphrase, scope=scope)
            print(
                f"root CA {cert.subject.rfc4514_string()} for {scope.describe()} in {args.folder}"
            )
        else:
            if not config.HOST_ID_RE.fullmatch(args.host_id):
                print("host_id must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}", file=sys.stderr)
                return 2
            cert = authority.init_host(
                Path(args.ca_folder),
                args.host_id,
                Path(args.out),
                passphrase=passphrase,
                scope=scope,
            )
            if scope_of(authority.load_root(Path(args.ca_folder))) is None:
                print(
                    "warning: this root has no name constraints (made before them): clients "
                    "trusting it accept any name it signs; make a new root (docs/tls.md)",
                    file=sys.stderr,
                )
            print(f"host intermediate {cert.subject.rfc4514_string()} in {args.out}")
    except (authority.TLSError, ScopeError) as exc:
        print(f"tls: {exc}", file=sys.stderr)
        return 1
    return 0


def run_broker(argv: Sequence[str]) -> int:
    """`broker add-host ID` / `add-shop` / `add-operator NAME`: create (or re-key) a broker user
    with exactly its permissions (vmbackend/protocol/broker_users.py, docs/deploy.md). Run on
    the broker's machine (rabbitmqctl). The password goes to --password-file (created 0600) or,
    without it, to stdout once; never to a log."""
    from vmbackend.files import write_atomic
    from vmbackend.protocol import broker_users

    parser = argparse.ArgumentParser(prog="python -m vmbackend broker")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--node", default=None, help="rabbitmqctl -n (default: the local node)")
    parser.add_argument("--password-file", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("add-host").add_argument("host_id")
    sub.add_parser("add-shop")
    sub.add_parser("add-operator").add_argument("name")
    args = parser.parse_args(list(argv))
    try:
        if args.command == "add-host":
            if not config.HOST_ID_RE.fullmatch(args.host_id):
                print("host_id must match [A-Za-z0-9][A-Za-z0-9._-]{0,62}", file=sys.stderr)
                return 2
            user = broker_users.host_user(args.host_id)
            password = broker_users.add_host(args.host_id, vhost=args.vhost, node=args.node)
        elif args.command == "add-shop":
            user = broker_users.SHOP_USER
            password = broker_users.add_shop(vhost=args.vhost, node=args.node)
        else:
            if not config.BROKER_USER_RE.fullmatch(args.name):
                print("name must be a broker user name", file=sys.stderr)
                return 2
            user = args.name
            password = broker_users.add_operator(args.name, vhost=args.vhost, node=args.node)
    except broker_users.BrokerAdminError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    if args.password_file:
        write_atomic(Path(args.password_file), (password + "\n").encode(), mode=0o600)
        print(f"broker user {user} on vhost {args.vhost}: password in {args.password_file}")
    else:
        print(f"broker user {user} on vhost {args.vhost}; password (shown once):")
        print(password)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "tls":
        return run_tls(argv[1:])
    if argv and argv[0] == "broker":
        return run_broker(argv[1:])
    if argv and argv[0] == "image":
        from vmbackend.images_cli import main as image_main

        return image_main(argv[1:])
    if argv and argv[0] == "daemon":
        return run_daemon(argv[1:])
    if argv and (argv[0] in CLIENT_COMMANDS or argv[0].startswith("--")):
        return run_client(argv)
    print(
        "usage: python -m vmbackend {daemon|image|tls|broker|"
        + "|".join(CLIENT_COMMANDS)
        + "} ...",
        file=sys.stderr,
    )
    return 2
