"""Warren host daemon: turns commands from the control broker into QEMU VMs running RabbitMQ.

Plain Python (no Django). Library modules plus a thin CLI: `python -m vmbackend --help`.
"""
