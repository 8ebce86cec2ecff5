"""Warren's host side: the daemon that turns commands from the control broker into QEMU VMs.

No Django, no shop code. Layers: protocol, images, machine, tls, host, CLI (docs/vmbackend.md).
"""
