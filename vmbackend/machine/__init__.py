"""One VM as the host drives it: the Machine protocol, its QEMU and simulated drivers, the guest.

May import vmbackend.protocol, vmbackend.images and vmbackend.files; never tls, host or the CLI.
"""
