"""The host daemon: AMQP I/O, the registry and state of its VMs, the commands, boots, pool and healing.

May import every other part of vmbackend (protocol, machine, tls, images, files); only the CLI imports it.
"""
