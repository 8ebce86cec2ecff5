"""`warren`: log in with a token, list plans and servers, create one and wait for it, show its
credentials, run an action and wait for its job, manage alarms. `--json` prints the API's answer.

Exit codes (docs/api.md, "The CLI"): 0 done; 1 the API refused, a job or server failed; 2 the
command line is wrong; 3 not logged in, or the token was refused (401/403); 4 gave up waiting
(--wait); 5 the API could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from warrencli.client import ApiError, BadUrl, Client, Login, NotLoggedIn, Unreachable
from warrencli.parser import build

OK, FAILED, USAGE, AUTH, TIMED_OUT, UNREACHABLE = 0, 1, 2, 3, 4, 5
SERVER_FINAL = {"ready", "failed", "cancelled", "deleting", "deleted", "past_due"}
JOB_FINAL = {"done", "failed"}


class WaitTimeout(Exception):
    pass


def _print(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2) if args.json else text(data))


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _all(client: Client, path: str) -> list[Any]:
    """Every item of a paginated list, page after page."""
    items: list[Any] = []
    cursor = ""
    sep = "&" if "?" in path else "?"
    while True:
        page = client.get(f"{path}{sep}limit=100" + (f"&cursor={cursor}" if cursor else ""))
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def _server_text(s: dict[str, Any]) -> str:
    lines = [f"{s['id']}  {s['plan']}  {s['status']}"]
    for key in ("payment_url", "management_url", "amqp_url"):
        if s.get(key):
            lines.append(f"  {key.replace('_', ' ')}: {s[key]}")
    return "\n".join(lines)


def _job_text(j: dict[str, Any]) -> str:
    reason = f" ({j['reason']})" if j.get("reason") else ""
    return f"job {j['id']}  {j['kind']}  {j['status']}{reason}"


def _wait(
    args: argparse.Namespace,
    poll: Callable[[], dict[str, Any]],
    final: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    while True:
        current = poll()
        if final(current):
            return current
        if time.monotonic() > deadline:
            raise WaitTimeout(f"still {current.get('status')} after {args.timeout:g} s")
        if not args.json:
            print(f"... {current.get('status')}", file=sys.stderr)
        time.sleep(args.interval)


# -- commands ----------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace, _client: Client | None) -> int:
    login = Login(url=args.url, token=args.token)
    Client(login).get("/servers?limit=1")  # refused tokens fail here, not later
    path = login.save()
    _print(args, {"config": str(path)}, lambda d: f"Logged in; saved to {d['config']}")
    return OK


def cmd_plans(args: argparse.Namespace, client: Client) -> int:
    plans = _all(client, "/plans")
    rows = [
        [
            p["slug"],
            p["name"],
            f"{p['memory_mb']} MB",
            f"{p['disk_gb']} GB",
            f"{p['monthly_price_cents'] / 100:.2f} {p['currency'].upper()}/mo",
            "available" if p["available"] else "sold out",
        ]
        for p in plans
    ]
    _print(args, plans, lambda _: _table(rows))
    return OK


def cmd_servers(args: argparse.Namespace, client: Client) -> int:
    servers = _all(client, "/servers")
    rows = [[s["id"], s["plan"], s["status"], s["created_at"][:16]] for s in servers]
    _print(args, servers, lambda _: _table(rows))
    return OK


def cmd_create(args: argparse.Namespace, client: Client) -> int:
    server = client.post("/servers", {"plan": args.plan, "pay_offline": args.pay_offline})
    if args.wait and server["status"] != "pending_payment":
        server = _wait(
            args,
            lambda: client.get(f"/servers/{server['id']}"),
            lambda s: s["status"] in SERVER_FINAL,
        )
    _print(args, server, _server_text)
    return OK if not args.wait or server["status"] in ("ready", "pending_payment") else FAILED


def cmd_show(args: argparse.Namespace, client: Client) -> int:
    server = client.get(f"/servers/{args.server}")
    if server["status"] in ("ready", "past_due") and server.get("management_url"):
        server["credentials"] = client.get(f"/servers/{args.server}/credentials")

    def text(s: dict[str, Any]) -> str:
        out = _server_text(s)
        if "credentials" in s:
            out += f"\n  username: {s['credentials']['username']}\n  password: {s['credentials']['password']}"
        return out

    _print(args, server, text)
    return OK


def cmd_cancel(args: argparse.Namespace, client: Client) -> int:
    _print(args, client.post(f"/servers/{args.server}/cancel"), _server_text)
    return OK


def _action(
    path: str, body: Callable[[argparse.Namespace], Any] = lambda a: None
) -> Callable[[argparse.Namespace, Client], int]:
    def run(args: argparse.Namespace, client: Client) -> int:
        job = client.post(f"/servers/{args.server}/{path}", body(args))
        return _finish_job(args, client, job)

    return run


def _finish_job(args: argparse.Namespace, client: Client, job: dict[str, Any]) -> int:
    if args.wait:
        job = _wait(
            args, lambda: client.get(f"/jobs/{job['id']}"), lambda j: j["status"] in JOB_FINAL
        )
    _print(args, job, _job_text)
    return FAILED if job["status"] == "failed" else OK


def cmd_job(args: argparse.Namespace, client: Client) -> int:
    return _finish_job(args, client, client.get(f"/jobs/{args.job}"))


def cmd_alarms(args: argparse.Namespace, client: Client) -> int:
    base = f"/servers/{args.server}/alarms"
    if args.alarm_command == "add":
        body = {"kind": args.kind, "threshold": args.threshold, "minutes": args.minutes}
        alarm = client.post(base, body)
        _print(args, alarm, lambda a: f"alarm {a['id']}: {a['description']}")
    elif args.alarm_command == "remove":
        client.delete(f"{base}/{args.alarm}")
        _print(args, {"removed": args.alarm}, lambda d: f"alarm {d['removed']} removed")
    else:
        alarms = _all(client, base)
        rows = [[str(a["id"]), a["description"], a["status"]] for a in alarms]
        _print(args, alarms, lambda _: _table(rows))
    return OK


def cmd_metrics(args: argparse.Namespace, client: Client) -> int:
    series = client.get(f"/servers/{args.server}/metrics?range={args.range}")

    def text(data: dict[str, Any]) -> str:
        if not data["points"]:
            return "(no measurements)"
        last = data["points"][-1]
        return f"{len(data['points'])} points; latest at {last['at']}:\n" + "\n".join(
            f"  {name}: {value}"
            for name, value in sorted(last["values"].items())
            if value is not None
        )

    _print(args, series, text)
    return OK


COMMANDS: dict[str, Callable[..., int]] = {
    "login": cmd_login,
    "plans": cmd_plans,
    "servers": cmd_servers,
    "create": cmd_create,
    "show": cmd_show,
    "cancel": cmd_cancel,
    "restart": _action("restart"),
    "rotate_password": _action("rotate-password"),
    "change_plan": _action("change-plan", lambda a: {"plan": a.plan}),
    "job": cmd_job,
    "alarms": cmd_alarms,
    "metrics": cmd_metrics,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build(COMMANDS).parse_args(argv)  # exits 2 on a wrong command line
    if args.command == "alarms" and not args.alarm_command:
        print("warren alarms: say list, add or remove", file=sys.stderr)
        return USAGE
    try:
        client = None if args.command == "login" else Client(Login.load())
        return int(args.run(args, client))
    except BadUrl as exc:
        print(f"warren: {exc}", file=sys.stderr)
        return USAGE
    except NotLoggedIn as exc:
        print(f"warren: {exc}", file=sys.stderr)
        return AUTH
    except ApiError as exc:
        if args.json:
            print(json.dumps(exc.problem, indent=2))
        print(f"warren: {exc}", file=sys.stderr)
        return AUTH if exc.status in (401, 403) else FAILED
    except WaitTimeout as exc:
        print(f"warren: gave up waiting: {exc}", file=sys.stderr)
        return TIMED_OUT
    except Unreachable as exc:
        print(f"warren: cannot reach the API: {exc}", file=sys.stderr)
        return UNREACHABLE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
