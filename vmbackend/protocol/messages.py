"""The control protocol's messages (docs/protocol.md), built and parsed here for both sides.

This module is the contract's one import point: the shop builds its commands with
`create_vm_body`/`delete_vm_body` (and the console's `set_admin_password_body`/`resize_vm_body`/
`restart_vm_body`) and reads events with `parse_event`; the daemon reads commands with `parse` and
builds events with `event`. Neither side writes a body by hand, so the two cannot drift apart.

`parse` turns a raw AMQP body into one typed command or raises `Rejected` with a reason that is
safe to send back to the sender and to put in a dead-letter header (it never echoes a password);
`parse_event` does the same for events (`MalformedEvent`). Both bound the body's size and nesting
depth BEFORE decoding, so no body can make them raise anything else (a deep `[[[...` would be a
RecursionError inside json, a 5000-digit number a ValueError). Plain code: no `assert`, no schema
library, no Django.

The messages are written in four modules by area, re-exported here: `wire` (the bounds and JSON
rules every body shares), `requests` (the commands to hosts), `events` (what hosts publish) and
`samples` (instance.metrics).
"""

from __future__ import annotations

from vmbackend.protocol.events import *  # noqa: F403
from vmbackend.protocol.requests import *  # noqa: F403
from vmbackend.protocol.samples import *  # noqa: F403
from vmbackend.protocol.wire import *  # noqa: F403
