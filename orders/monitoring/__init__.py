"""Metrics from the hosts, their rollups and charts, alarms, and the metrics part of the order page.
May import orders.core, orders.models, orders.lib, store and vmbackend's protocol."""
