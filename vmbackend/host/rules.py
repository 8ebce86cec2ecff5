"""The host's rules about one VM and one message, as pure functions (no lock, no I/O).

How a delivery becomes a command or a reason to dead-letter it, what a command does to a VM in
its state (`command_plan`, `resize_refusal`), and what the host answers and re-publishes about a
VM (`create_response`, `outcome_response`, `state_event`). The Registry (registry.py) applies
them under its lock.
"""

from __future__ import annotations

from typing import Any

from vmbackend.host.config import Config
from vmbackend.host.pool import POOL_PREFIX, is_pool_id
from vmbackend.host.state import (
    ACCEPTED,
    BOOTING,
    DELETED,
    FAILED,
    LOST,
    READY,
    STOPPED,
    VMRecord,
)
from vmbackend.protocol import capacity, messages
from vmbackend.protocol.messages import (
    CONSOLE_COMMANDS,
    ConsoleCommand,
    CreateVM,
    ListVMs,
    Rejected,
    VMCommand,
)


def sender_refusal(user_id: str | None, senders: tuple[str, ...]) -> str | None:
    """Why a command that changes a VM must be refused because of who sent it, or None.

    `user_id` is the message's property, which the broker has checked against the publishing
    connection's user; without it nobody vouches for the sender."""
    if not user_id:
        return "command refused: no user_id (the sender is unknown)"
    if user_id not in senders:
        return f"command refused: sender {user_id[:128]} may not send commands to this host"
    return None


# Answers of `Registry.claim` and `Registry.create_decision`.
CLAIMED, UNKNOWN, BUSY = "claimed", "unknown", "busy"
NEW, DUPLICATE, FULL = "new", "duplicate", "full"
# Answers of `command_plan`.
RUN, DELETE, WAIT_FOR_BOOT = "run", "delete", "wait-for-boot"
# Answers of `Registry.request_state` (a console command's request id on one VM).
REQUEST_NEW, REQUEST_DONE, REQUEST_RUNNING = "new", "done", "running"
MAX_REQUESTS = 20  # done request ids remembered per VM
COMMAND_DONE, COMMAND_FAILED = messages.INSTANCE_COMMAND_DONE, messages.INSTANCE_COMMAND_FAILED


def hostname_for(vm_id: str) -> str:
    """A valid hostname from a vm-id (vm-ids may hold `_`, hostnames may not)."""
    return "vm-" + vm_id[:12].lower().replace("_", "-").rstrip("-")


def _parse(body: bytes) -> messages.Command:
    """`messages.parse`, with any exception it lets through (deep nesting, a number too long
    for int()) turned into Rejected: one hostile body never kills the daemon or loops through
    a requeue."""
    try:
        return messages.parse(body)
    except Rejected:
        raise
    except RecursionError:
        raise Rejected("body nests too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure is the sender's problem
        raise Rejected(f"body could not be parsed ({type(exc).__name__})") from None


def _not_a_pool_id(cmd: messages.Command) -> None:
    """Pool VMs are the host's own (vmbackend/host/pool.py): no message names one, whatever
    queue or key it comes by (a create-vm placed on the host's own key named one once)."""
    vm_id = getattr(cmd, "vm_id", "")
    if is_pool_id(vm_id):
        raise Rejected(f"vm-ids starting with {POOL_PREFIX} are reserved for the host")


def parse_create(body: bytes) -> CreateVM:
    """The create-vm in a delivery from the shared queue, or Rejected with the reason."""
    cmd = _parse(body)
    if not isinstance(cmd, CreateVM):
        raise Rejected(f"{cmd.command} must not be sent with routing key create-vm")
    _not_a_pool_id(cmd)
    return cmd


def parse_host(
    body: bytes, *, routing_key: str, host_key: str
) -> CreateVM | ListVMs | VMCommand | ConsoleCommand:
    """The command in a delivery to the host queue (own key or a broadcast key), or Rejected.
    The console's commands and a placed create-vm (docs/fleet.md) come only on the host's own
    key (never broadcast)."""
    cmd = _parse(body)
    if isinstance(cmd, CreateVM) and routing_key != host_key:
        raise Rejected("create-vm goes to routing key create-vm or host.<host_id>")
    if cmd.command in CONSOLE_COMMANDS and routing_key != host_key:
        raise Rejected(f"{cmd.command} goes to routing key host.<host_id> of the VM's host")
    if routing_key != host_key and routing_key != cmd.command:
        raise Rejected(f"routing key {routing_key} does not match command {cmd.command}")
    _not_a_pool_id(cmd)
    return cmd


def describe_status(record: VMRecord) -> str:
    """The VM's state in words a customer can read (a console command's refusal)."""
    if record.status == BOOTING and record.healing:
        return "restarting after it stopped unexpectedly"
    if record.status in (ACCEPTED, BOOTING):
        return "starting"
    return {STOPPED: "stopped", LOST: "down", FAILED: "failed", DELETED: "deleted"}.get(
        record.status, record.status
    )


def command_plan(record: VMRecord, command: str, *, boot_running: bool) -> str:
    """What start/stop/restart/delete-vm (or a console command) does to `record` now; Rejected
    with the reason if it may not run."""
    if command == "delete-vm":
        return DELETE
    if command == messages.SET_ADMIN_PASSWORD and record.status != READY:
        raise Rejected(f"the VM is {describe_status(record)}; try again when it is running")
    if command == messages.RESIZE_VM and record.status not in (READY, STOPPED):
        raise Rejected(f"the VM is {describe_status(record)}; try again when it is running")
    if record.status in (ACCEPTED, BOOTING):
        if command == "start-vm" and boot_running:
            return WAIT_FOR_BOOT  # starting a booting VM: its answer is the boot's outcome
        raise Rejected(f"vm-id {record.vm_id} is still booting (delete-vm cancels a boot)")
    if record.status == FAILED:
        raise Rejected(f"vm-id {record.vm_id} failed; only delete-vm applies")
    return RUN


def resize_refusal(
    record: VMRecord, cmd: messages.ResizeVM, others: capacity.Resources
) -> str | None:
    """Why `cmd` may not resize `record` (None: it may): the disk only grows, and whatever
    grows (memory, vCPUs, disk) must fit the host next to its other VMs (`others`: the host's
    totals and what every other VM holding a slot uses). Shrinking always fits."""
    if cmd.disk_gb < record.disk_gb:
        return f"the disk only grows: the VM has {record.disk_gb} GB, {cmd.disk_gb} GB were asked"
    checks = (
        (
            "MiB of memory",
            cmd.memory_mb,
            record.memory_mb,
            others.memory_total_mb,
            others.memory_used_mb,
        ),
        ("vCPUs", cmd.vcpus, record.vcpus, others.vcpus_total, others.vcpus_used),
        ("GB of disk", cmd.disk_gb, record.disk_gb, others.disk_total_gb, others.disk_used_gb),
    )
    for unit, wanted, now, total, used in checks:
        if wanted > now and used + wanted > total:
            return (
                f"{wanted} {unit} does not fit this host "
                f"(at most {max(0, total - used)} {unit} is free for this VM)"
            )
    return None


def outcome_response(record: VMRecord, event_type: str, fields: dict[str, Any]) -> bytes:
    """The reply body (for a requester with reply_to) that goes with a console outcome."""
    if event_type == COMMAND_FAILED:
        return messages.error(str(fields.get("reason", "failed")))
    response = {"vm-id": record.vm_id, "status": record.status}
    for key in ("memory_mb", "vcpus", "disk_gb"):
        if key in fields:
            response[key.replace("_", "-")] = fields[key]
    return messages.success(response)


def ready_fields(record: VMRecord) -> dict[str, Any]:
    """The instance.ready fields of a ready record."""
    return {
        "management_url": record.management_url,
        "amqp_url": record.amqp_url,
        "admin_username": record.admin_username,
        "ip_addresses": record.ip_addresses,
        "boot": record.boot or "cold",
        "seconds": record.seconds,
    }


def state_event(record: VMRecord) -> tuple[str, dict[str, Any]]:
    """The event that tells a listener where `record` is now: the last one queued for it.

    By status alone an accepted VM whose launch already published `progress` would re-publish
    `accepted` with a newer seq and move a listener backwards (issue 9 D).
    """
    if record.last_event:
        return record.last_event["type"], dict(record.last_event["fields"])
    # A record written before `last_event` existed: derive it from the status.
    if record.status == READY:
        return "instance.ready", ready_fields(record)
    if record.status == FAILED:
        return "instance.failed", {"reason": record.reason}
    if record.status == STOPPED:
        return "instance.stopped", {}
    if record.status == LOST:
        return "instance.lost", {"reason": record.reason or "QEMU process exited"}
    if record.status == BOOTING and record.stage:
        return "instance.progress", {"stage": record.stage}
    return "instance.accepted", {"image": record.image}


def new_record(cfg: Config, cmd: CreateVM) -> VMRecord:
    return VMRecord(
        vm_id=cmd.vm_id,
        image=cmd.image,
        memory_mb=cmd.memory_mb,
        vcpus=cmd.vcpus,
        disk_gb=cmd.disk_gb,
        hostname=hostname_for(cmd.vm_id),
        admin_username=cmd.admin_username,
        admin_password=cmd.admin_password,
        password_generated=cmd.password_generated,
        limits=dict(cmd.limits),
        network=cfg.network,
        plain_ports=cmd.plain_ports,
    )


def create_response(record: VMRecord, host_id: str) -> dict[str, Any]:
    response = {"vm-id": record.vm_id, "host-id": host_id, "admin-username": record.admin_username}
    if record.password_generated:
        response["admin-password"] = record.admin_password
    return response
