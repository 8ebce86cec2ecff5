"""Each server's own TLS name, `<short-id>.<domain>`: the host puts it in the VM's certificate
and the shop shows it on the order page, both computing it from the vm-id (docs/tls.md).

A name no other VM has: two VMs on one host share its address, so an address (or the host's
name) in their certificates would let one VM's key answer for the other. The short id is a hash
of the vm-id, not the vm-id itself, so any vm-id makes a valid DNS label.
"""

from __future__ import annotations

import hashlib

DEFAULT_VM_DOMAIN = "warren.localhost"  # WARREN_VM_DOMAIN; the CA's name constraint
SHORT_ID_CHARS = 16  # 64 bits: no two VMs of a fleet meet by chance


def short_id(vm_id: str) -> str:
    return hashlib.sha256(vm_id.encode()).hexdigest()[:SHORT_ID_CHARS]


def server_name(vm_id: str, domain: str = DEFAULT_VM_DOMAIN) -> str:
    """The DNS name a client verifies for this VM (lower case; `domain` as configured)."""
    return f"{short_id(vm_id)}.{domain.strip().rstrip('.').lower()}"
