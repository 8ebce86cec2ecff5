"""The hosts: silent hosts, placement of create-vm, evacuation, selling (sold out) and the waitlist.
May import orders.core, orders.models, orders.lib, store and vmbackend's protocol."""
