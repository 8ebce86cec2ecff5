"""The control protocol between the shop and the hosts: messages, topology, capacity, versions, backoff.

Imports nothing of Warren (the standard library only): the one part of vmbackend the shop may use.
"""
