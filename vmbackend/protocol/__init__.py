"""The control protocol shared with the shop: messages, topology, capacity, versions, backoff.

Imports nothing of Warren (the standard library only): the one part of vmbackend the shop uses.
"""
