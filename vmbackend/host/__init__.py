"""The host daemon: AMQP I/O, its VMs' registry and state, commands, boots, pool and healing.

May import protocol, machine, tls, images and files of vmbackend; the CLI and `warren run` use it.
"""
